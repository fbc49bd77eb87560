/* mmapipc-corpus: struct STU size=28 align=4 */
struct STU { int id; char name[20]; char sex; };
