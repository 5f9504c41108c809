use proptest::prelude::*;

use super::*;

fn parse(source: &str) -> Result<Pattern, PatternError> {
    Pattern::parse(source, &PatternLimits::default())
}

fn matches(pattern: &str, path: &str) -> bool {
    parse(pattern).unwrap().matches(path)
}

/// The straightforward matcher: backtracking over segments and characters, straight from the
/// grammar. Exponential in the worst case, so only fed small inputs.
fn reference(pattern: &str, path: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Star,
        Char(char),
    }
    fn tokens(segment: &str) -> Vec<Token> {
        let mut out = Vec::new();
        let mut chars = segment.chars();
        while let Some(c) = chars.next() {
            out.push(match c {
                '\\' => Token::Char(chars.next().unwrap()),
                '*' => Token::Star,
                c => Token::Char(c),
            });
        }
        out
    }
    fn glob(p: &[Token], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((Token::Star, rest)) => (0..=s.len()).any(|k| glob(rest, &s[k..])),
            Some((Token::Char(c), rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
        }
    }
    fn segments(p: &[&str], s: &[&str]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((&"**", rest)) => (0..=s.len()).any(|k| segments(rest, &s[k..])),
            Some((first, rest)) => {
                let chars: Vec<char> = s.first().map(|x| x.chars().collect()).unwrap_or_default();
                !s.is_empty() && glob(&tokens(first), &chars) && segments(rest, &s[1..])
            }
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    segments(&p, &s)
}

#[test]
fn examples_match_as_the_spec_says() {
    let cases: &[(&str, &str, bool)] = &[
        ("docs/readme", "docs/readme", true),
        ("docs/readme", "docs/readme/x", false),
        ("docs/*", "docs/readme", true),
        ("docs/*", "docs", false),
        ("docs/*", "docs/a/b", false),
        ("docs/*.md", "docs/readme.md", true),
        ("docs/*.md", "docs/readme.txt", false),
        ("docs/draft-*-v*", "docs/draft-plan-v2", true),
        ("docs/draft-*-v*", "docs/draft-v2", false),
        ("a*a", "a", false),
        ("a*a", "aa", true),
        ("docs/**", "docs", true),
        ("docs/**", "docs/a/b/c", true),
        ("docs/**", "doc", false),
        ("**/notes", "notes", true),
        ("**/notes", "a/b/notes", true),
        ("**/notes", "a/notes/b", false),
        ("a/**/b", "a/b", true),
        ("a/**/b", "a/x/y/b", true),
        ("a/**/b", "a/x/y/c", false),
        ("**", "anything/at/all", true),
        ("*/**/*.md", "x/y.md", true),
        ("*/**/*.md", "y.md", false),
        (r"lit\*/x", "lit*/x", true),
        (r"lit\*/x", "literal/x", false),
        (r"back\\slash", r"back\slash", true),
    ];
    for (pattern, path, expected) in cases {
        assert_eq!(matches(pattern, path), *expected, "{pattern} vs {path}");
        assert_eq!(
            reference(pattern, path),
            *expected,
            "reference: {pattern} vs {path}"
        );
    }
}

#[test]
fn bad_patterns_are_refused_with_their_reason() {
    let long = "a".repeat(257);
    let deep = vec!["a"; 33].join("/");
    let cases: Vec<(&str, PatternError)> = vec![
        ("", PatternError::Empty),
        (&long, PatternError::TooLong { len: 257, max: 256 }),
        (&deep, PatternError::TooManySegments { max: 32 }),
        ("/a", PatternError::EmptySegment(0)),
        ("a/", PatternError::EmptySegment(1)),
        ("a//b", PatternError::EmptySegment(1)),
        ("a/../b", PatternError::DotSegment(1)),
        ("./b", PatternError::DotSegment(0)),
        ("a/b**", PatternError::DoubleStarInSegment(1)),
        ("***", PatternError::DoubleStarInSegment(0)),
        (r"a\b", PatternError::BadEscape(0)),
        (r"a/b\", PatternError::BadEscape(1)),
        ("a/\u{7}", PatternError::ControlCharacter(1)),
    ];
    for (source, expected) in cases {
        assert_eq!(parse(source).unwrap_err(), expected, "{source:?}");
    }
    // The message names the reason.
    assert_eq!(
        parse("a/b**").unwrap_err().to_string(),
        "segment 1: `**` must be a whole segment"
    );
}

#[test]
fn canonical_forms_are_stable_and_mean_the_same() {
    for (source, canonical) in [
        ("a/**/**/b", "a/**/b"),
        ("**/**", "**"),
        (r"x\*y/*", r"x\*y/*"),
        (r"x\\y", r"x\\y"),
        ("docs/*.md", "docs/*.md"),
    ] {
        let pattern = parse(source).unwrap();
        assert_eq!(pattern.as_str(), canonical);
        assert_eq!(parse(canonical).unwrap(), pattern);
    }
    assert!(parse("**/**").unwrap().matches_everything());
    assert!(!parse("**/a").unwrap().matches_everything());
    let org = parse("org/team/*/x").unwrap();
    let prefix: Vec<&str> = org.literal_prefix().collect();
    assert_eq!(prefix, ["org", "team"]);
    assert_eq!(parse("**/x").unwrap().literal_prefix().count(), 0);
}

#[test]
fn adversarial_patterns_stay_bounded_and_right() {
    let limits = PatternLimits::default();
    // Alternating `**` and literals at the segment limit, against a path of the longest
    // allowed shape that almost matches.
    let pattern = std::iter::repeat_n("**/a", 15)
        .collect::<Vec<_>>()
        .join("/")
        + "/b";
    let almost = vec!["a"; 31].join("/") + "/c";
    let exact = vec!["a"; 31].join("/") + "/b";
    let p = Pattern::parse(&pattern, &limits).unwrap();
    assert!(!p.matches(&almost));
    assert!(p.matches(&exact));
    // Many stars in one segment against a long segment of the one letter they need.
    let stars = "*a".repeat(120) + "*b";
    let p = Pattern::parse(&stars, &limits).unwrap();
    assert!(!p.matches(&"a".repeat(500)));
    assert!(p.matches(&("a".repeat(500) + "b")));
}

fn pattern_strategy() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("**".to_owned()),
        Just("*".to_owned()),
        "[ab]{1,3}",
        "[ab*]{1,4}".prop_filter("no ** inside a segment", |s| !s.contains("**")),
        Just(r"a\*".to_owned()),
    ];
    prop::collection::vec(segment, 1..6).prop_map(|s| s.join("/"))
}

fn path_strategy() -> impl Strategy<Value = String> {
    let segment = prop_oneof!["[ab]{1,4}", Just("a*".to_owned())];
    prop::collection::vec(segment, 1..7).prop_map(|s| s.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn the_matcher_agrees_with_the_reference(pattern in pattern_strategy(), path in path_strategy()) {
        let parsed = parse(&pattern).unwrap();
        prop_assert_eq!(parsed.matches(&path), reference(&pattern, &path), "{} vs {}", pattern, path);
        // The canonical form matches exactly the same paths.
        let canonical = parse(parsed.as_str()).unwrap();
        prop_assert_eq!(canonical.matches(&path), parsed.matches(&path));
        // Every match starts with the literal prefix.
        if parsed.matches(&path) {
            let prefix: Vec<&str> = parsed.literal_prefix().collect();
            let segments: Vec<&str> = path.split('/').collect();
            prop_assert!(segments.starts_with(&prefix));
        }
    }
}

#[test]
fn a_set_holding_everything_holds_nothing_else() {
    let p = |s: &str| parse(s).unwrap();
    let all = PatternSet::new([p("docs/**"), p("**/**")]);
    assert_eq!(all.canonical(), vec!["**".to_owned()]);
    assert_eq!(all.with(&[p("notes/*")]), all);
    assert!(all.without(&[p("**")]).is_empty());
    let some = PatternSet::new([p("docs/**")]);
    assert_eq!(some.with(&[p("**")]), all);
}

/// The length and segment limits count the pattern as sent, not its canonical form (§3.5):
/// `a/**/**/b` is 9 bytes and 4 segments although it canonicalises to `a/**/b`.
#[test]
fn limits_apply_before_canonical_form() {
    let limits = |len, segments| PatternLimits {
        max_pattern_len: len,
        max_pattern_segments: segments,
        ..PatternLimits::default()
    };
    let sent = "a/**/**/b";
    assert_eq!(parse(sent).unwrap().as_str(), "a/**/b");
    assert!(matches!(
        Pattern::parse(sent, &limits(256, 3)),
        Err(PatternError::TooManySegments { max: 3 })
    ));
    assert!(matches!(
        Pattern::parse(sent, &limits(8, 32)),
        Err(PatternError::TooLong { len: 9, max: 8 })
    ));
    assert!(Pattern::parse(sent, &limits(9, 4)).is_ok());
}
