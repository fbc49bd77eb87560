/* mmapipc-corpus: rec refused="error: expected" */
struct rec { int a; int = 3; };
