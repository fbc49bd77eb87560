/* mmapipc-corpus: rec ok */
struct rec { short m[2][3]; char names[3][5]; unsigned char raw[3]; int cube[2][2][2]; };
