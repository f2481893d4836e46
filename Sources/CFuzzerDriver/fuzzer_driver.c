// A weak stand-in for libFuzzer's driver: when the binary is built without -fsanitize=fuzzer it
// still links, and runs the harness once over each file (or every file of each directory) named
// on the command line, so crash reproducers and the seed corpus can be replayed in any build.
// Built with -fsanitize=fuzzer, libFuzzer's strong definition replaces this one.
#include "fuzzer_driver.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int replay_file(const char *path, int (*callback)(const uint8_t *, size_t)) {
    FILE *file = fopen(path, "rb");
    if (!file) { fprintf(stderr, "cannot open %s\n", path); return 1; }
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    fseek(file, 0, SEEK_SET);
    uint8_t *data = malloc(size > 0 ? (size_t)size : 1);
    size_t read = fread(data, 1, (size_t)size, file);
    fclose(file);
    callback(data, read);
    free(data);
    return 0;
}

static int replay(const char *path, int (*callback)(const uint8_t *, size_t), int *count) {
    struct stat status;
    if (stat(path, &status) != 0) { fprintf(stderr, "cannot stat %s\n", path); return 1; }
    if (!S_ISDIR(status.st_mode)) { *count += 1; return replay_file(path, callback); }
    DIR *directory = opendir(path);
    if (!directory) return 1;
    struct dirent *entry;
    int failures = 0;
    while ((entry = readdir(directory)) != NULL) {
        if (entry->d_name[0] == '.') continue;
        char child[4096];
        snprintf(child, sizeof child, "%s/%s", path, entry->d_name);
        failures += replay(child, callback, count);
    }
    closedir(directory);
    return failures;
}

__attribute__((weak)) int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *, size_t)) {
    int failures = 0, count = 0;
    for (int i = 1; i < *argc; i++) {
        if ((*argv)[i][0] == '-') continue;  // libFuzzer options mean nothing here
        failures += replay((*argv)[i], callback, &count);
    }
    fprintf(stderr, "replayed %d inputs without libFuzzer\n", count);
    return failures ? 1 : 0;
}
