//! getopt(3) as OpenBSD's libc does it: no permutation (options stop at
//! the first operand), `--` ends the options, a lone `-` is an operand,
//! and complaints are warnx(3) lines.

use crate::fail::PROGNAME;

/// One parsed option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    pub ch: char,
    /// The argument of an option declared with `:`.
    pub arg: Option<String>,
}

/// Iterates over the options of `args`; `args[0]` is the program or
/// command name, as in C.
pub struct Getopt<'a> {
    args: &'a [String],
    optstring: &'static str,
    /// The index of the first operand once the options are done.
    pub optind: usize,
    /// Byte offset in `args[optind]` of the next option character.
    place: usize,
}

impl<'a> Getopt<'a> {
    pub fn new(args: &'a [String], optstring: &'static str) -> Getopt<'a> {
        Getopt {
            args,
            optstring,
            optind: 1,
            place: 0,
        }
    }

    /// The operands after the options (valid once `next` returned `None`).
    pub fn rest(&self) -> &'a [String] {
        &self.args[self.optind.min(self.args.len())..]
    }

    /// Whether `c` takes an argument; `None` if it is not an option.
    fn spec(&self, c: char) -> Option<bool> {
        if c == ':' {
            return None;
        }
        let i = self.optstring.find(c)?;
        Some(self.optstring[i + c.len_utf8()..].starts_with(':'))
    }
}

impl Iterator for Getopt<'_> {
    /// An option, or the line getopt prints before the caller's usage.
    type Item = Result<Opt, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.place == 0 {
            let word = self.args.get(self.optind)?;
            if word == "--" {
                self.optind += 1;
                return None;
            }
            if !word.starts_with('-') || word == "-" {
                return None;
            }
            self.place = 1;
        }
        let word = &self.args[self.optind];
        let c = word[self.place..].chars().next()?;
        self.place += c.len_utf8();
        let at_end = self.place >= word.len();
        let done_word = |g: &mut Self| {
            g.optind += 1;
            g.place = 0;
        };
        match self.spec(c) {
            None => {
                if at_end {
                    done_word(self);
                }
                Some(Err(format!("{PROGNAME}: unknown option -- {c}")))
            }
            Some(false) => {
                if at_end {
                    done_word(self);
                }
                Some(Ok(Opt { ch: c, arg: None }))
            }
            Some(true) => {
                let arg = if !at_end {
                    let a = word[self.place..].to_string();
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
                                "{PROGNAME}: option requires an argument -- {c}"
                            )))
                        }
                    }
                };
                Some(Ok(Opt {
                    ch: c,
                    arg: Some(arg),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn run(v: &[&str], spec: &'static str) -> (Vec<Result<Opt, String>>, Vec<String>) {
        let a = args(v);
        let mut g = Getopt::new(&a, spec);
        let opts: Vec<_> = g.by_ref().collect();
        (opts, g.rest().to_vec())
    }

    fn opt(ch: char, arg: Option<&str>) -> Result<Opt, String> {
        Ok(Opt {
            ch,
            arg: arg.map(str::to_string),
        })
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
