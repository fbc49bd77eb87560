/* mmapipc-corpus: rec refused="__x__" */
struct rec { int id; int __init__; int __slots__; };
