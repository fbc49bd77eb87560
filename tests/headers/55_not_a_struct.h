/* mmapipc-corpus: rec refused="rec is int, not a struct" */
typedef int rec;
