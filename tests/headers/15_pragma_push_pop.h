/* mmapipc-corpus: outer size=24 */
#pragma pack(push, 2)
struct inner { char a; double b; int c; };
#pragma pack(pop)
struct outer { char x; struct inner in; double z; };
