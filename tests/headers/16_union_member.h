/* mmapipc-corpus: rec refused="is a union" */
struct rec { int n; union { int i; float f; } u; };
