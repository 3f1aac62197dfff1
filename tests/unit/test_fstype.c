/*
 * fstype: a path's filesystem type from a mountinfo file in the kernel's
 * format, written here with the temp directory's real device number, and
 * from the real /proc/self/mountinfo; then which types are network ones
 * (a SQLite database there is refused, docs/design.md §12).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cmocka.h>

#include "sluice/fstype.h"

static char dir[] = "/tmp/sluice-fstype-XXXXXX";

/* Writes a mountinfo whose line for dir's device says type; returns the
 * file's path (static). */
static const char *
mountinfo_with(const char *type)
{
    static char path[64];
    struct stat st;
    FILE *f;

    assert_int_equal(stat(dir, &st), 0);
    snprintf(path, sizeof(path), "%s/mountinfo", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "22 27 0:21 / /proc rw,relatime - proc proc rw\n");
    fprintf(f,
            "36 35 %u:%u / /var/lib/sluice rw,noatime shared:1 master:2 - "
            "%s srv:/export/sluice rw,vers=4.2\n",
            major(st.st_dev), minor(st.st_dev), type);
    fclose(f);
    return path;
}

static void
test_type_of_an_existing_file_and_a_missing_one(void **state)
{
    (void)state;
    char type[64], db[128];
    const char *mi = mountinfo_with("nfs4");

    assert_int_equal(fstype_of(dir, mi, type, sizeof(type)), 0);
    assert_string_equal(type, "nfs4");
    /* a database not created yet: its directory answers */
    snprintf(db, sizeof(db), "%s/queue.db", dir);
    assert_int_equal(fstype_of(db, mi, type, sizeof(type)), 0);
    assert_string_equal(type, "nfs4");
    assert_true(fstype_is_network(type));

    mi = mountinfo_with("fuse.sshfs");
    assert_int_equal(fstype_of(db, mi, type, sizeof(type)), 0);
    assert_true(fstype_is_network(type));
    unlink(mi);
}

static void
test_the_real_temp_directory_is_local(void **state)
{
    (void)state;
    char type[64];

    if (access("/proc/self/mountinfo", R_OK) != 0)
        skip();
    assert_int_equal(fstype_of(dir, NULL, type, sizeof(type)), 0);
    assert_true(type[0] != '\0');
    assert_false(fstype_is_network(type));
}

static void
test_no_matching_mount_is_enoent(void **state)
{
    (void)state;
    char type[64], path[64];
    FILE *f;

    snprintf(path, sizeof(path), "%s/empty", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "22 27 0:21 / /proc rw,relatime - proc proc rw\n");
    fclose(f);
    assert_int_equal(fstype_of(dir, path, type, sizeof(type)), -ENOENT);
    assert_int_equal(fstype_of(dir, "/nonexistent/mountinfo", type,
                               sizeof(type)),
                     -ENOENT);
    unlink(path);
}

static void
test_network_types(void **state)
{
    (void)state;
    static const char *const network[] = {"nfs", "nfs4", "cifs", "smb3",
                                          "9p", "ceph", "glusterfs",
                                          "fuse.sshfs", "fuse.s3fs"};
    static const char *const local[] = {"ext4", "xfs", "btrfs", "tmpfs",
                                        "overlay", "zfs", "fuse.fuse-overlayfs",
                                        ""};
    for (size_t i = 0; i < sizeof(network) / sizeof(network[0]); i++)
        assert_true(fstype_is_network(network[i]));
    for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++)
        assert_false(fstype_is_network(local[i]));
}

static int
setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int
teardown(void **state)
{
    (void)state;
    return rmdir(dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_of_an_existing_file_and_a_missing_one),
        cmocka_unit_test(test_the_real_temp_directory_is_local),
        cmocka_unit_test(test_no_matching_mount_is_enoent),
        cmocka_unit_test(test_network_types),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
