/* mmapipc-corpus: rec ok */
struct rec { const int a; volatile short b; _Atomic int c; const char name[6]; };
