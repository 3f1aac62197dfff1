/*
 * text: what reaches a log line or a terminal table of provider text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/text.h"

static void
assert_escaped(const char *in, const char *want)
{
    char out[256];

    assert_int_equal(text_escape(out, sizeof(out), in), strlen(want));
    assert_string_equal(out, want);
    assert_int_equal(text_needs_escape(in), strcmp(in, want) != 0);
}

static void
test_line_breaks_and_escapes_become_visible(void **state)
{
    (void)state;
    assert_escaped("a\nb\r\tc", "a\\nb\\r\\tc");
    assert_escaped("\x1b[31mred\x1b]0;title\x07", "\\x1b[31mred\\x1b]0;title\\x07");
    assert_escaped("del\x7f", "del\\x7f");
    /* U+009B (CSI) in UTF-8: terminals act on it as on ESC [ */
    assert_escaped("\xc2\x9b" "2J", "\\u009b2J");
}

static void
test_text_in_any_language_passes(void **state)
{
    (void)state;
    assert_escaped("plain text: 100% ok", "plain text: 100% ok");
    assert_escaped("caf\xc3\xa9 \xe2\x82\xac \xe6\x97\xa5\xe6\x9c\xac",
                   "caf\xc3\xa9 \xe2\x82\xac \xe6\x97\xa5\xe6\x9c\xac");
    assert_escaped("\xc2\xa0nbsp", "\xc2\xa0nbsp");
    assert_escaped("back\\slash", "back\\slash");
}

static void
test_a_full_buffer_cuts_before_an_escape(void **state)
{
    (void)state;
    char out[5];

    assert_int_equal(text_escape(out, sizeof(out), "abc\ndef"), 3);
    assert_string_equal(out, "abc");
    assert_int_equal(text_escape(out, 1, "abc"), 0);
    assert_string_equal(out, "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_breaks_and_escapes_become_visible),
        cmocka_unit_test(test_text_in_any_language_passes),
        cmocka_unit_test(test_a_full_buffer_cuts_before_an_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
