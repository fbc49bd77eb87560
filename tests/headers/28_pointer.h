/* mmapipc-corpus: rec refused="is a pointer (char *)" */
struct rec { int a; char *p; };
