//! vm.conf's lexer, with parse.y's character-level behaviour: a stack of
//! files (`include`), a per-file push-back buffer that macro expansion
//! writes into between two marker bytes, `\`-newline continuation, blank
//! squeezing that reads the underlying file, the fake newline at the first
//! end of file, and the error paths (`findeol`) that eat the rest of a line
//! and hand the parser an `ERROR` token.
use vmd_proto::compat::{isalnum, isdigit, ispunct, isspace, strtonum};

use super::grammar::T;
use super::{ConfigError, Level, Location, Message};

pub(crate) const EOF: i32 = -1;
const START_EXPAND: i32 = 1;
const DONE_EXPAND: i32 = 2;
/// parse.y's `char buf[8096]` in yylex.
const BUFSIZE: usize = 8096;
/// The largest configuration file read, included files alike: far more
/// than any vm.conf, and /dev/zero or an endless FIFO stop here.
pub(crate) const MAX_CONF_SIZE: u64 = 4 << 20;
/// How deep `include`s may nest (the first file is depth 1).
pub(crate) const MAX_INCLUDE_DEPTH: usize = 16;

/// Why a configuration file was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("file larger than {MAX_CONF_SIZE} bytes")]
    TooLarge,
    #[error("include loop")]
    Loop,
    #[error("includes nested deeper than {MAX_INCLUDE_DEPTH}")]
    TooDeep,
}

/// A semantic value on yacc's value stack.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum Value {
    #[default]
    None,
    Str(Vec<u8>),
    Num(i64),
    Owner {
        uid: u32,
        gid: i64,
    },
    Lladdr([u8; 6]),
}

#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub term: T,
    pub value: Value,
}

struct SrcFile {
    name: String,
    /// Device and inode of an opened file, to find include loops.
    id: Option<(u64, u64)>,
    data: Vec<u8>,
    pos: usize,
    unget: Vec<u8>,
    eof_reached: bool,
    lineno: i32,
}

impl SrcFile {
    /// getc(3) on the file's stream.
    fn getc(&mut self) -> i32 {
        match self.data.get(self.pos) {
            Some(&c) => {
                self.pos += 1;
                i32::from(c)
            }
            None => EOF,
        }
    }

    /// ungetc(3) of the character just read from the stream.
    fn ungetc(&mut self, c: i32) {
        if c != EOF && self.pos > 0 {
            self.pos -= 1;
        }
    }
}

/// A macro (`name = value` or `-D name=value`).
pub(crate) struct Sym {
    pub name: Vec<u8>,
    pub val: Vec<u8>,
    pub used: bool,
    pub persist: bool,
}

pub(crate) struct Lexer {
    files: Vec<SrcFile>,
    expanding: bool,
    /// yylval.lineno: the line the messages name.
    pub lineno: i32,
    pub syms: Vec<Sym>,
    pub log: Vec<Message>,
    pub errors: u32,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// parse.y's keyword table (`lookup`).
fn keyword(s: &[u8]) -> Option<T> {
    Some(match s {
        b"add" => T::Add,
        b"agentx" => T::Agentx,
        b"allow" => T::Allow,
        b"boot" => T::Boot,
        b"cdrom" => T::Cdrom,
        b"context" => T::Context,
        b"delay" => T::Delay,
        b"device" => T::Device,
        b"disable" => T::Disable,
        b"disk" => T::Disk,
        b"down" => T::Down,
        b"enable" => T::Enable,
        b"format" => T::Format,
        b"group" => T::Group,
        b"id" => T::Vmid,
        b"include" => T::Include,
        b"inet6" => T::Inet6,
        b"instance" => T::Instance,
        b"interface" => T::Interface,
        b"interfaces" => T::Nifs,
        b"lladdr" => T::Lladdr,
        b"local" => T::Local,
        b"locked" => T::Locked,
        b"memory" => T::Memory,
        b"net" => T::Net,
        b"owner" => T::Owner,
        b"parallel" => T::Parallel,
        b"path" => T::Path,
        b"prefix" => T::Prefix,
        b"rdomain" => T::Rdomain,
        b"sev" => T::Sev,
        b"seves" => T::Seves,
        b"size" => T::Size,
        b"socket" => T::Socket,
        b"staggered" => T::Staggered,
        b"start" => T::Start,
        b"switch" => T::Switch,
        b"up" => T::Up,
        b"vm" => T::Vm,
        _ => return None,
    })
}

fn allowed_to_end_number(c: i32) -> bool {
    isspace(c)
        || c == i32::from(b')')
        || c == i32::from(b',')
        || c == i32::from(b'/')
        || c == i32::from(b'}')
        || c == i32::from(b'=')
}

fn allowed_in_string(c: i32) -> bool {
    isalnum(c) || (ispunct(c) && !b"(){}!=#,".contains(&(c as u8)))
}

/// The token of a single character; NUL is token 0, which yacc reads as
/// the end of the input.
fn char_token(c: i32) -> T {
    match c as u8 {
        0 => T::End,
        b'\n' => T::Newline,
        b'{' => T::LBrace,
        b'}' => T::RBrace,
        b'=' => T::Equals,
        b',' => T::Comma,
        _ => T::OtherChar,
    }
}

impl Lexer {
    pub fn new(defines: &[(Vec<u8>, Vec<u8>)]) -> Lexer {
        let mut lx = Lexer {
            files: Vec::new(),
            expanding: false,
            lineno: 0,
            syms: Vec::new(),
            log: Vec::new(),
            errors: 0,
        };
        for (name, val) in defines {
            lx.symset(name, val, true);
        }
        lx
    }

    pub fn log(&mut self, level: Level, location: Option<Location>, message: String) {
        self.log.push(Message {
            level,
            error: ConfigError { location, message },
        });
    }

    /// `file:line` as yyerror prints it.
    pub fn location(&self) -> Location {
        let name = self
            .files
            .last()
            .map(|f| f.name.clone())
            .unwrap_or_default();
        Location {
            file: name,
            line: self.lineno,
        }
    }

    /// yyerror(): `file:line: message`, counted as an error.
    pub fn yyerror(&mut self, msg: String) {
        self.errors += 1;
        let loc = self.location();
        self.log(Level::Error, Some(loc), msg);
    }

    /// pushfile(): open a file and make it current. The first file starts at
    /// line 1, included ones at 0 (the newline pushed after `include`
    /// brings them to 1).
    pub fn pushfile(&mut self, name: &[u8]) -> Result<(), PushError> {
        use std::io::Read;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        if self.files.len() >= MAX_INCLUDE_DEPTH {
            return Err(PushError::TooDeep);
        }
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
        // O_NONBLOCK: open(2) of a FIFO must not wait for a writer.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let m = f.metadata()?;
        if !m.is_file() {
            return Err(PushError::NotRegular);
        }
        let id = (m.dev(), m.ino());
        if self.files.iter().any(|f| f.id == Some(id)) {
            return Err(PushError::Loop);
        }
        let mut data = Vec::new();
        f.take(MAX_CONF_SIZE + 1).read_to_end(&mut data)?;
        if data.len() as u64 > MAX_CONF_SIZE {
            return Err(PushError::TooLarge);
        }
        let lineno = if self.files.is_empty() { 1 } else { 0 };
        self.files.push(SrcFile {
            name: lossy(name),
            id: Some(id),
            data,
            pos: 0,
            unget: Vec::new(),
            eof_reached: false,
            lineno,
        });
        Ok(())
    }

    /// A text in place of the first file (tests, `vmctl load` of a buffer).
    pub fn push_text(&mut self, name: &str, text: &[u8]) {
        let lineno = if self.files.is_empty() { 1 } else { 0 };
        self.files.push(SrcFile {
            name: name.to_string(),
            id: None,
            data: text.to_vec(),
            pos: 0,
            unget: Vec::new(),
            eof_reached: false,
            lineno,
        });
    }

    /// popfile(): back to the including file; false when none is left.
    pub fn popfile(&mut self) -> bool {
        self.files.pop();
        !self.files.is_empty()
    }

    fn is_top(&self) -> bool {
        self.files.len() <= 1
    }

    fn cur(&mut self) -> &mut SrcFile {
        self.files.last_mut().expect("a file is open")
    }

    pub fn lungetc(&mut self, c: i32) {
        if c != EOF {
            self.cur().unget.push(c as u8);
        }
    }

    fn igetc(&mut self) -> i32 {
        loop {
            let f = self.cur();
            let c = match f.unget.pop() {
                Some(c) => i32::from(c),
                None => f.getc(),
            };
            if c == START_EXPAND {
                self.expanding = true;
            } else if c == DONE_EXPAND {
                self.expanding = false;
            } else {
                return c;
            }
        }
    }

    fn lgetc(&mut self, quotec: i32) -> i32 {
        if quotec != 0 {
            let c = self.igetc();
            if c == EOF {
                self.yyerror("reached end of file while parsing quoted string".into());
                if self.is_top() || !self.popfile() {
                    return EOF;
                }
                return quotec;
            }
            return c;
        }
        let mut c;
        loop {
            c = self.igetc();
            if c != i32::from(b'\\') {
                break;
            }
            let next = self.igetc();
            if next != i32::from(b'\n') {
                c = next;
                break;
            }
            self.lineno = self.cur().lineno;
            self.cur().lineno += 1;
        }
        if c == i32::from(b'\t') || c == i32::from(b' ') {
            // Squeeze blanks; like parse.y this reads the file itself, not
            // the push-back buffer.
            let f = self.cur();
            let mut d;
            loop {
                d = f.getc();
                if d != i32::from(b'\t') && d != i32::from(b' ') {
                    break;
                }
            }
            f.ungetc(d);
            c = i32::from(b' ');
        }
        if c == EOF {
            let f = self.cur();
            if !f.eof_reached {
                f.eof_reached = true;
                return i32::from(b'\n');
            }
            while c == EOF {
                if self.is_top() || !self.popfile() {
                    return EOF;
                }
                c = self.igetc();
            }
        }
        c
    }

    /// findeol(): skip to the end of the line after a lexical error.
    fn findeol(&mut self) -> Token {
        loop {
            let c = self.lgetc(0);
            if c == i32::from(b'\n') {
                self.cur().lineno += 1;
                break;
            }
            if c == EOF {
                break;
            }
        }
        Token {
            term: T::LexError,
            value: Value::None,
        }
    }

    fn symget(&mut self, name: &[u8]) -> Option<Vec<u8>> {
        let s = self.syms.iter_mut().find(|s| s.name == name)?;
        s.used = true;
        Some(s.val.clone())
    }

    /// symset(): a persistent (`-D`) macro cannot be redefined; any other
    /// definition replaces the old one and moves to the end of the list.
    pub fn symset(&mut self, name: &[u8], val: &[u8], persist: bool) {
        if let Some(i) = self.syms.iter().position(|s| s.name == name) {
            if self.syms[i].persist {
                return;
            }
            self.syms.remove(i);
        }
        self.syms.push(Sym {
            name: name.to_vec(),
            val: val.to_vec(),
            used: false,
            persist,
        });
    }

    pub fn yylex(&mut self) -> Token {
        'top: loop {
            let mut buf: Vec<u8> = Vec::new();
            let mut c;
            loop {
                c = self.lgetc(0);
                if c != i32::from(b' ') && c != i32::from(b'\t') {
                    break;
                }
            }
            self.lineno = self.cur().lineno;
            if c == i32::from(b'#') {
                loop {
                    c = self.lgetc(0);
                    if c == i32::from(b'\n') || c == EOF {
                        break;
                    }
                }
            }
            if c == i32::from(b'$') && !self.expanding {
                loop {
                    c = self.lgetc(0);
                    if c == EOF {
                        return Token {
                            term: T::End,
                            value: Value::None,
                        };
                    }
                    if buf.len() + 1 >= BUFSIZE - 1 {
                        self.yyerror("string too long".into());
                        return self.findeol();
                    }
                    if isalnum(c) || c == i32::from(b'_') {
                        buf.push(c as u8);
                        continue;
                    }
                    self.lungetc(c);
                    break;
                }
                let Some(val) = self.symget(&buf) else {
                    self.yyerror(format!("macro '{}' not defined", lossy(&buf)));
                    return self.findeol();
                };
                self.lungetc(DONE_EXPAND);
                for &b in val.iter().rev() {
                    self.lungetc(i32::from(b));
                }
                self.lungetc(START_EXPAND);
                continue 'top;
            }

            if c == i32::from(b'\'') || c == i32::from(b'"') {
                let quotec = c;
                loop {
                    c = self.lgetc(quotec);
                    if c == EOF {
                        return Token {
                            term: T::End,
                            value: Value::None,
                        };
                    }
                    if c == i32::from(b'\n') {
                        self.cur().lineno += 1;
                        continue;
                    } else if c == i32::from(b'\\') {
                        let next = self.lgetc(quotec);
                        if next == EOF {
                            return Token {
                                term: T::End,
                                value: Value::None,
                            };
                        }
                        if next == quotec || next == i32::from(b' ') || next == i32::from(b'\t') {
                            c = next;
                        } else if next == i32::from(b'\n') {
                            self.cur().lineno += 1;
                            continue;
                        } else {
                            self.lungetc(next);
                        }
                    } else if c == quotec {
                        break;
                    } else if c == 0 {
                        self.yyerror("syntax error".into());
                        return self.findeol();
                    }
                    if buf.len() + 1 >= BUFSIZE - 1 {
                        self.yyerror("string too long".into());
                        return self.findeol();
                    }
                    buf.push(c as u8);
                }
                return Token {
                    term: T::String,
                    value: Value::Str(buf),
                };
            }

            if c == i32::from(b'-') || isdigit(c) {
                loop {
                    buf.push(c as u8);
                    if buf.len() >= BUFSIZE {
                        self.yyerror("string too long".into());
                        return self.findeol();
                    }
                    c = self.lgetc(0);
                    if c == EOF || !isdigit(c) {
                        break;
                    }
                }
                self.lungetc(c);
                let only_minus = buf == b"-";
                if !only_minus && (c == EOF || allowed_to_end_number(c)) {
                    return match strtonum(&buf, i64::MIN, i64::MAX) {
                        Ok(v) => Token {
                            term: T::Number,
                            value: Value::Num(v),
                        },
                        Err(e) => {
                            self.yyerror(format!("\"{}\" invalid number: {e}", lossy(&buf)));
                            self.findeol()
                        }
                    };
                }
                // nodigits: push all but the first character back.
                while buf.len() > 1 {
                    let b = buf.pop().unwrap_or_default();
                    self.lungetc(i32::from(b));
                }
                c = i32::from(buf.pop().unwrap_or_default());
                if c == i32::from(b'-') {
                    return Token {
                        term: T::OtherChar,
                        value: Value::None,
                    };
                }
            }

            if isalnum(c) || c == i32::from(b':') || c == i32::from(b'_') || c == i32::from(b'/') {
                loop {
                    buf.push(c as u8);
                    if buf.len() >= BUFSIZE {
                        self.yyerror("string too long".into());
                        return self.findeol();
                    }
                    c = self.lgetc(0);
                    if c == EOF || !allowed_in_string(c) {
                        break;
                    }
                }
                self.lungetc(c);
                return match keyword(&buf) {
                    Some(k) => Token {
                        term: k,
                        value: Value::None,
                    },
                    None => Token {
                        term: T::String,
                        value: Value::Str(buf),
                    },
                };
            }
            if c == i32::from(b'\n') {
                self.lineno = self.cur().lineno;
                self.cur().lineno += 1;
            }
            if c == EOF {
                return Token {
                    term: T::End,
                    value: Value::None,
                };
            }
            return Token {
                term: char_token(c),
                value: Value::None,
            };
        }
    }
}
