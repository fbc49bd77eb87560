/* mmapipc-corpus: rec size=16 */
typedef struct { char a; double b; } rec;
