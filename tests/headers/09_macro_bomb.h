/* mmapipc-corpus: rec refused="error" */
#define X X X X X X X X
#if X
struct rec { int a; };
#endif
