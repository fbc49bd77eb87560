/* mmapipc-corpus: rec refused="limit" */
struct rec { char a[1ULL << 40]; };
