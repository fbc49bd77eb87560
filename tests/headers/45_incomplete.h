/* mmapipc-corpus: rec refused="incomplete type" */
struct q;
struct rec { int a; struct q x; };
