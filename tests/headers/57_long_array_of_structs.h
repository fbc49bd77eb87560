/* mmapipc-corpus: rec ok */
struct pt { int a; char b; };
struct rec { char h; struct pt arr[300]; double d[100]; };
