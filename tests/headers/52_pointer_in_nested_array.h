/* mmapipc-corpus: rec refused="field a[0].p is a pointer" */
struct in { int *p; };
struct rec { struct in a[2]; };
