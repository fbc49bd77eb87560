/* mmapipc-corpus: rec size=7 */
struct rec { char c;
#pragma pack(1)
int a; short b; };
#pragma pack()
