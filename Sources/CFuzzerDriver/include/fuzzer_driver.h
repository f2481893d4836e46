#ifndef KITH_FUZZER_DRIVER_H
#define KITH_FUZZER_DRIVER_H
#include <stddef.h>
#include <stdint.h>

/// libFuzzer's entry point when the program has its own main (compiled with -fsanitize=fuzzer).
/// Without libFuzzer, the weak fallback in fuzzer_driver.c replays the files named in argv.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
