//! getopt(3) as OpenBSD's libc does it: no permutation (options stop at
//! the first operand), `--` ends the options, a lone `-` is an operand,
//! and complaints are warnx(3) lines.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::fail::PROGNAME;

/// One parsed option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    pub ch: char,
    /// The argument of an option declared with `:`: bytes, as given.
    pub arg: Option<OsString>,
}

/// Iterates over the options of `args`; `args[0]` is the program or
/// command name, as in C.  Arguments are bytes (a file name need not be
/// UTF-8); option characters are single bytes, as in C.
pub struct Getopt<'a> {
    args: &'a [OsString],
    optstring: &'static str,
    /// The index of the first operand once the options are done.
    pub optind: usize,
    /// Byte offset in `args[optind]` of the next option character.
    place: usize,
}

impl<'a> Getopt<'a> {
    pub fn new(args: &'a [OsString], optstring: &'static str) -> Getopt<'a> {
        Getopt {
            args,
            optstring,
            optind: 1,
            place: 0,
        }
    }

    /// The operands after the options (valid once `next` returned `None`).
    pub fn rest(&self) -> &'a [OsString] {
        &self.args[self.optind.min(self.args.len())..]
    }

    /// Whether `c` takes an argument; `None` if it is not an option.
    fn spec(&self, c: u8) -> Option<bool> {
        if c == b':' || !c.is_ascii() {
            return None;
        }
        let i = self.optstring.bytes().position(|o| o == c)?;
        Some(self.optstring.as_bytes().get(i + 1) == Some(&b':'))
    }
}

impl Iterator for Getopt<'_> {
    /// An option, or the line getopt prints before the caller's usage.
    type Item = Result<Opt, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.place == 0 {
            let word = self.args.get(self.optind)?.as_bytes();
            if word == b"--" {
                self.optind += 1;
                return None;
            }
            if !word.starts_with(b"-") || word == b"-" {
                return None;
            }
            self.place = 1;
        }
        let word = self.args[self.optind].as_bytes();
        let c = *word.get(self.place)?;
        self.place += 1;
        let at_end = self.place >= word.len();
        let done_word = |g: &mut Self| {
            g.optind += 1;
            g.place = 0;
        };
        // A byte that is not ASCII is shown as the character of that code.
        let ch = char::from(c);
        match self.spec(c) {
            None => {
                if at_end {
                    done_word(self);
                }
                Some(Err(format!("{PROGNAME}: unknown option -- {ch}")))
            }
            Some(false) => {
                if at_end {
                    done_word(self);
                }
                Some(Ok(Opt { ch, arg: None }))
            }
            Some(true) => {
                let arg = if !at_end {
                    let a = OsString::from_vec(word[self.place..].to_vec());
                    done_word(self);
                    a
                } else {
                    done_word(self);
                    match self.args.get(self.optind) {
                        Some(a) => {
                            self.optind += 1;
                            a.clone()
                        }
                        None => {
                            return Some(Err(format!(
                                "{PROGNAME}: option requires an argument -- {ch}"
                            )))
                        }
                    }
                };
                Some(Ok(Opt { ch, arg: Some(arg) }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn run(v: &[&str], spec: &'static str) -> (Vec<Result<Opt, String>>, Vec<OsString>) {
        let a = args(v);
        let mut g = Getopt::new(&a, spec);
        let opts: Vec<_> = g.by_ref().collect();
        (opts, g.rest().to_vec())
    }

    fn opt(ch: char, arg: Option<&str>) -> Result<Opt, String> {
        Ok(Opt {
            ch,
            arg: arg.map(OsString::from),
        })
    }

    #[test]
    fn getopt_arguments_are_bytes() {
        let a = vec![
            OsString::from("create"),
            OsString::from_vec(b"-s1\xff".to_vec()),
            OsString::from_vec(b"/tmp/\xfe.img".to_vec()),
        ];
        let mut g = Getopt::new(&a, "s:");
        assert_eq!(
            g.next(),
            Some(Ok(Opt {
                ch: 's',
                arg: Some(OsString::from_vec(b"1\xff".to_vec()))
            }))
        );
        assert_eq!(g.next(), None);
        assert_eq!(g.rest()[0].as_bytes(), b"/tmp/\xfe.img");
        let a = vec![OsString::from("x"), OsString::from_vec(b"-\xff".to_vec())];
        let mut g = Getopt::new(&a, "a");
        assert_eq!(
            g.next(),
            Some(Err("vmctl: unknown option -- \u{ff}".into()))
        );
    }

    #[test]
    fn getopt_clusters_and_arguments() {
        let (o, rest) = run(&["stop", "-fw", "vm1"], "afw");
        assert_eq!(o, vec![opt('f', None), opt('w', None)]);
        assert_eq!(rest, args(&["vm1"]));

        let (o, rest) = run(&["start", "-m1G", "-b", "-x", "-cL", "vm"], "b:cLm:");
        assert_eq!(
            o,
            vec![
                opt('m', Some("1G")),
                opt('b', Some("-x")),
                opt('c', None),
                opt('L', None)
            ]
        );
        assert_eq!(rest, args(&["vm"]));
    }

    #[test]
    fn getopt_stops_at_operands() {
        // No permutation: options after the operand stay operands.
        let (o, rest) = run(&["start", "vm", "-m", "1G"], "m:");
        assert!(o.is_empty());
        assert_eq!(rest, args(&["vm", "-m", "1G"]));
        let (o, rest) = run(&["stop", "--", "-a"], "afw");
        assert!(o.is_empty());
        assert_eq!(rest, args(&["-a"]));
        let (o, rest) = run(&["status", "-"], "r");
        assert!(o.is_empty());
        assert_eq!(rest, args(&["-"]));
    }

    #[test]
    fn getopt_complaints() {
        let (o, _) = run(&["status", "-x"], "r");
        assert_eq!(o, vec![Err("vmctl: unknown option -- x".to_string())]);
        let (o, _) = run(&["start", "-m"], "m:");
        assert_eq!(
            o,
            vec![Err("vmctl: option requires an argument -- m".to_string())]
        );
        let (o, _) = run(&["x", "-:"], "a:");
        assert_eq!(o, vec![Err("vmctl: unknown option -- :".to_string())]);
    }
}
