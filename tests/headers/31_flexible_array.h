/* mmapipc-corpus: rec refused="flexible array member" */
struct rec { int n; int data[]; };
