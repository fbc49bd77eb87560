/* mmapipc-corpus: anon size=32 */
struct anon { int a; struct { char b; double c; }; short d; };
