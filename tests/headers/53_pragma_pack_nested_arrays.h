/* mmapipc-corpus: struct p1 size=15 */
#pragma pack(1)
struct p1 { char a; long long b; struct { char c; short d; } s[2]; };
#pragma pack()
