/* mmapipc-corpus: rec refused="function pointer" */
struct rec { int a; void (*cb)(int); };
