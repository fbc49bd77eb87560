/* mmapipc-corpus: rec refused="zero-length array" */
struct rec { int n; int data[0]; };
