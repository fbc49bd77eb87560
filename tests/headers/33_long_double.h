/* mmapipc-corpus: rec refused="long double" */
struct rec { int n; long double x; };
