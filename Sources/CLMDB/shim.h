#ifndef KITH_CLMDB_SHIM_H
#define KITH_CLMDB_SHIM_H
#include <lmdb.h>
#endif
