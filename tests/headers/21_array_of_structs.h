/* mmapipc-corpus: rec ok */
struct pt { short x; int y; char z; };
struct rec { char h; struct pt pts[12]; double tail; };
