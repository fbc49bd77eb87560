/* mmapipc-corpus: rec refused="is a bitfield" */
struct rec { int a; unsigned flag : 3; };
