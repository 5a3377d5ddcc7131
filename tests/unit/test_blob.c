/* Resume state files (io/sb_blob.h): a good blob loads; a truncated, extended, bit-flipped, wrong
 * magic, wrong length or huge-length blob, a directory or a FIFO in its place are all refused
 * (false, no crash, no hang), and a declared length that the file does not hold is refused
 * before any allocation of that size (checked under an address-space limit where the build
 * allows one). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_blob.h"
#include "sb_test.h"

static char dir[4096];

static void path_of(char *path, size_t size, const char *name) { sb_test_format(path, size, "%s/%s", dir, name); }

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void poke(const char *path, long offset, const void *bytes, size_t count)
{
    int fd = open(path, O_WRONLY);
    SB_CHECK(fd >= 0 && pwrite(fd, bytes, count, offset) == (ssize_t)count);
    if (fd >= 0)
        close(fd);
}

static void copy(const char *from, const char *to)
{
    char command[9000];
    sb_test_format(command, sizeof command, "cp '%s' '%s'", from, to);
    SB_CHECK(system(command) == 0);
}

int main(void)
{
    char *temp = sb_test_temp_dir("blob");
    sb_test_format(dir, sizeof dir, "%s", temp);
    uint8_t payload[1000], back[1000];
    for (int i = 0; i < 1000; i++)
        payload[i] = (uint8_t)(i * 7 + 3);
    char good[4200], bad[4200];
    path_of(good, sizeof good, "good.bin");
    path_of(bad, sizeof bad, "bad.bin");
    SB_CHECK(sb_blob_save(good, payload, sizeof payload, NULL) == SB_OK);
    SB_CHECK(file_size(good) == 48 + 1000);
    memset(back, 0, sizeof back);
    SB_CHECK(sb_blob_load(good, back, sizeof back) && memcmp(back, payload, sizeof back) == 0);
    void *any = NULL;
    size_t bytes = 0;
    SB_CHECK(sb_blob_load_any(good, &any, &bytes) && bytes == 1000 && memcmp(any, payload, 1000) == 0);
    free(any);

    /* wrong expected size: refused, and the caller's buffer untouched */
    memset(back, 0xEE, sizeof back);
    SB_CHECK(!sb_blob_load(good, back, 999));
    SB_CHECK(back[0] == 0xEE && back[998] == 0xEE);
    SB_CHECK(!sb_blob_load(good, back, 0));

    /* truncated at every length, including inside the header */
    for (long length = 0; length < 48 + 1000; length += 37) {
        copy(good, bad);
        SB_CHECK(truncate(bad, length) == 0);
        SB_CHECK_MSG(!sb_blob_load(bad, back, sizeof back), "truncated to %ld accepted", length);
        SB_CHECK_MSG(!sb_blob_load_any(bad, &any, &bytes), "truncated to %ld accepted (any)", length);
    }
    /* extended by garbage */
    copy(good, bad);
    poke(bad, 48 + 1000, "xx", 2);
    SB_CHECK(!sb_blob_load(bad, back, sizeof back) && !sb_blob_load_any(bad, &any, &bytes));

    /* every single flipped bit (header and payload) */
    int accepted = 0;
    for (long byte = 0; byte < 48 + 1000; byte++) {
        copy(good, bad);
        uint8_t value;
        int fd = open(bad, O_RDONLY);
        SB_CHECK(fd >= 0 && pread(fd, &value, 1, byte) == 1);
        close(fd);
        value ^= (uint8_t)(1u << (byte % 8));
        poke(bad, byte, &value, 1);
        accepted += sb_blob_load(bad, back, sizeof back);
    }
    SB_CHECK_MSG(accepted == 0, "%d single-bit corruptions accepted", accepted);

    /* a declared length far beyond the file, and one that a sparse file seems to hold */
    copy(good, bad);
    uint64_t huge = (uint64_t)1 << 62;
    poke(bad, 8, &huge, 8);
    SB_CHECK(!sb_blob_load(bad, back, sizeof back) && !sb_blob_load_any(bad, &any, &bytes));
    char sparse[4200];
    path_of(sparse, sizeof sparse, "sparse.bin");
    copy(good, sparse);
    uint64_t declared = ((uint64_t)1 << 40) - 48;
    poke(sparse, 8, &declared, 8);
    bool made = truncate(sparse, (off_t)1 << 40) == 0; /* 1 TiB, sparse: no disk used */
#if !defined(__SANITIZE_ADDRESS__)
    /* a limit far below the declared length: a blob_load that allocated it would fail loudly */
    struct rlimit old_limit, limit = {(rlim_t)8 << 30, (rlim_t)8 << 30};
    bool limited = getrlimit(RLIMIT_AS, &old_limit) == 0 && setrlimit(RLIMIT_AS, &limit) == 0;
#endif
    if (made)
        SB_CHECK(!sb_blob_load(sparse, back, sizeof back)); /* wrong size: refused from the header */
#if !defined(__SANITIZE_ADDRESS__)
    if (limited)
        setrlimit(RLIMIT_AS, &old_limit);
#endif
    unlink(sparse);

    /* wrong magic, a directory, a FIFO (must not block), an absent file */
    copy(good, bad);
    poke(bad, 0, "SBSTATE2", 8);
    SB_CHECK(!sb_blob_load(bad, back, sizeof back));
    char sub[4200], fifo[4200];
    path_of(sub, sizeof sub, "dir.bin");
    path_of(fifo, sizeof fifo, "fifo.bin");
    SB_CHECK(mkdir(sub, 0755) == 0);
    SB_CHECK(!sb_blob_load(sub, back, sizeof back) && !sb_blob_load_any(sub, &any, &bytes));
    SB_CHECK(mkfifo(fifo, 0644) == 0);
    SB_CHECK(!sb_blob_load(fifo, back, sizeof back) && !sb_blob_load_any(fifo, &any, &bytes));
    path_of(bad, sizeof bad, "absent.bin");
    SB_CHECK(!sb_blob_load(bad, back, sizeof back));

    /* the manifest lists the good blob only */
    SB_CHECK(sb_blob_write_manifest(dir, NULL, NULL) == SB_OK);
    sb_test_remove_tree(dir);
    free(temp);
    return sb_test_finish("test_blob");
}
