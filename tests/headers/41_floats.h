/* mmapipc-corpus: rec ok */
struct rec { float f; double d; float fs[3]; char c; double ds[2]; };
