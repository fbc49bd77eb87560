/* mmapipc-corpus: rec refused="16-byte integer" */
struct rec { char c; __int128 big; };
