/* mmapipc-corpus: rec refused="is a union" */
union rec { int i; float f; };
