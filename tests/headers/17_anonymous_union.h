/* mmapipc-corpus: rec refused="anonymous union" */
struct rec { int n; union { int i; float f; }; };
