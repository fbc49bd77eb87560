/* mmapipc-corpus: rec refused="limit" */
struct rec { int a[0x7fffffff]; };
