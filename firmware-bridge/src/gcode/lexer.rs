//! The byte-level fast path: one line of G-code into words, comments and the odd special
//! token, without allocating.
//!
//! Real files mix dialects, so the lexer is forgiving: lower-case letters, spaces between a
//! letter and its number, `N` numbers, `*` checksums (the host adds its own), `%` program
//! markers, `;` and `( )` comments. Anything it cannot read becomes [`Token::Junk`] and the
//! analyzer asks the `gcode` crate for a precise diagnostic on that one line.

/// One address word: a letter and its number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Word {
    /// Upper-case ASCII letter.
    pub letter: u8,
    /// The number as written.
    pub value: f64,
    /// For command words: the number before the dot (`38` of `G38.2`).
    pub major: u32,
    /// For command words: the first digit after the dot, 0 when absent.
    pub minor: u8,
    /// 1-based byte column of the letter.
    pub column: u32,
}

/// What the lexer found next on a line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Token<'a> {
    /// An address word such as `G1` or `X10.5`.
    Word(Word),
    /// A letter without a number (`G28 X Y`), upper case, with its column.
    Flag(u8, u32),
    /// A `;` or `( )` comment, without its delimiters.
    Comment(&'a [u8], u32),
    /// Free text after a command that takes a string (`M117 Hello`).
    Text(&'a [u8], u32),
    /// A GRBL system command (`$H`, `$X`, `$32=1`), the whole rest of the line.
    Dollar(&'a [u8], u32),
    /// A bare word such as Klipper's `START_PRINT EXTRUDER=215`, the rest of the line.
    Macro(&'a [u8], u32),
    /// Bytes the lexer cannot read, starting at this column.
    Junk(u32),
}

/// Iterator over the tokens of one line (no line terminator inside).
#[derive(Debug)]
pub(crate) struct Lexer<'a> {
    line: &'a [u8],
    pos: usize,
    rest_is_text: bool,
    at_start: bool,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(line: &'a [u8]) -> Self {
        Self {
            line,
            pos: 0,
            rest_is_text: false,
            at_start: true,
        }
    }

    fn col(&self, pos: usize) -> u32 {
        u32::try_from(pos + 1).unwrap_or(u32::MAX)
    }

    #[inline(always)]
    fn skip_blanks(&mut self) {
        while let Some(&b) = self.line.get(self.pos) {
            if b == b' ' || b == b'\t' || b == b'\r' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }
}

/// Marlin commands whose argument is free text, which may contain letters and digits that
/// must not be read as words (`M117 Layer 3 of 40`, `M23 PART~1.GCO`).
fn takes_text(word: &Word) -> bool {
    word.letter == b'M' && matches!(word.major, 23 | 28 | 29 | 30 | 32 | 33 | 117 | 118 | 928)
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_blanks();
        let start = self.pos;
        let &b = self.line.get(start)?;
        if self.rest_is_text {
            self.rest_is_text = false;
            // A `;` still starts a comment after text (Marlin strips comments first).
            let end =
                memchr::memchr(b';', &self.line[start..]).map_or(self.line.len(), |i| start + i);
            self.pos = end;
            let text = trim_end(&self.line[start..end]);
            if !text.is_empty() {
                return Some(Token::Text(text, self.col(start)));
            }
            return self.next();
        }
        let first = self.at_start;
        self.at_start = false;
        match b {
            b';' => {
                self.pos = self.line.len();
                Some(Token::Comment(
                    trim_end(&self.line[start + 1..]),
                    self.col(start),
                ))
            }
            b'(' => {
                let end = memchr::memchr(b')', &self.line[start..]);
                let (text_end, next) = match end {
                    Some(i) => (start + i, start + i + 1),
                    // An unclosed parenthesis runs to the end of the line, as in GRBL.
                    None => (self.line.len(), self.line.len()),
                };
                self.pos = next;
                Some(Token::Comment(
                    &self.line[start + 1..text_end],
                    self.col(start),
                ))
            }
            // A quoted string argument (`M862.3 P "MK4"`, `M118 "done"`).
            b'"' => {
                let end = memchr::memchr(b'"', &self.line[start + 1..])
                    .map_or(self.line.len(), |i| start + 1 + i);
                self.pos = (end + 1).min(self.line.len());
                Some(Token::Text(&self.line[start + 1..end], self.col(start)))
            }
            b'%' => {
                self.pos += 1;
                self.at_start = first;
                self.next()
            }
            // A checksum ends the line's content.
            b'*' => {
                self.pos = self.line.len();
                None
            }
            b'$' if first => {
                let end = memchr::memchr(b';', &self.line[start..])
                    .map_or(self.line.len(), |i| start + i);
                self.pos = end;
                Some(Token::Dollar(
                    trim_end(&self.line[start..end]),
                    self.col(start),
                ))
            }
            _ if b.is_ascii_alphabetic() => {
                let letter = b.to_ascii_uppercase();
                self.pos += 1;
                self.skip_blanks();
                match parse_number(&self.line[self.pos..]) {
                    Some((n, used)) => {
                        self.pos += used;
                        let word = Word {
                            letter,
                            value: n.value,
                            major: n.major,
                            minor: n.minor,
                            column: self.col(start),
                        };
                        if takes_text(&word) {
                            self.rest_is_text = true;
                        }
                        Some(Token::Word(word))
                    }
                    // `P "MK4"`: the quoted string is the value.
                    None if self.line.get(self.pos) == Some(&b'"') => self.next(),
                    // `G28 X Y`, `G28 W`: a letter alone is a flag.
                    None if !first
                        && self
                            .line
                            .get(self.pos)
                            .is_none_or(|&n| n == b';' || n == b'(' || n.is_ascii_alphabetic()) =>
                    {
                        Some(Token::Flag(letter, self.col(start)))
                    }
                    None => {
                        let next = self.line.get(start + 1).copied().unwrap_or(b' ');
                        if first && (next.is_ascii_alphabetic() || next == b'_') {
                            let end = memchr::memchr(b';', &self.line[start..])
                                .map_or(self.line.len(), |i| start + i);
                            self.pos = end;
                            Some(Token::Macro(
                                trim_end(&self.line[start..end]),
                                self.col(start),
                            ))
                        } else {
                            self.pos = self.line.len();
                            Some(Token::Junk(self.col(start)))
                        }
                    }
                }
            }
            _ => {
                self.pos = self.line.len();
                Some(Token::Junk(self.col(start)))
            }
        }
    }
}

/// The words of a move that the analysis reads: X, Y, Z, E and F, as written (file units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Axes {
    /// X, Y, Z, E, F; meaningful only where `mask` has the bit.
    pub values: [f64; 5],
    /// 1-based columns of the letters (clamped to 65535).
    pub columns: [u16; 5],
    /// Bit `i` set when `values[i]` was given: [`AXIS_X`] … [`AXIS_F`].
    pub mask: u8,
}

pub(crate) const AXIS_X: u8 = 1;
pub(crate) const AXIS_Y: u8 = 1 << 1;
pub(crate) const AXIS_Z: u8 = 1 << 2;
pub(crate) const AXIS_E: u8 = 1 << 3;
pub(crate) const AXIS_F: u8 = 1 << 4;
pub(crate) const AXES_XYZE: u8 = AXIS_X | AXIS_Y | AXIS_Z | AXIS_E;

impl Axes {
    pub(crate) const EMPTY: Axes = Axes {
        values: [0.0; 5],
        columns: [0; 5],
        mask: 0,
    };

    #[inline(always)]
    pub(crate) fn has(&self, bit: u8) -> bool {
        self.mask & bit != 0
    }
}

/// A line that the fast path reads whole: `G0` or `G1`, a space, then only X, Y, Z, E and F
/// words (any case, each followed by a blank, `;` or the end of the line) and perhaps a
/// trailing `;` comment. These lines make up most of a sliced file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PlainMove {
    /// `G0` rather than `G1`.
    pub rapid: bool,
    pub axes: Axes,
    /// The comment after `;`, as a byte range of the input.
    pub comment: Option<(usize, usize)>,
    /// Where the line ends: the index of its `\n`, or the input's length when it has none.
    pub end: usize,
}

impl PlainMove {
    pub(crate) const EMPTY: PlainMove = PlainMove {
        rapid: false,
        axes: Axes::EMPTY,
        comment: None,
        end: 0,
    };
}

/// Reads a plain move at the start of `buf`, up to its first `\n` (or the end of `buf`),
/// into `m`. False when the line is anything else, or longer than `max_len` bytes (`m`
/// then holds nothing of use); the general lexer then takes it. Reads no further than the
/// line and at most 8 bytes past a number.
///
/// `m` is filled in place, and of its axes only the mask is cleared: the values and
/// columns of letters the line does not have keep whatever they held, and nothing reads
/// them. Returning a fresh `PlainMove` made the compiler zero one and copy it, about 25
/// instructions a line.
#[inline(always)]
pub(crate) fn plain_move(buf: &[u8], max_len: usize, m: &mut PlainMove) -> bool {
    plain_move_into(buf, max_len, m).is_some()
}

#[inline(always)]
fn plain_move_into(buf: &[u8], max_len: usize, m: &mut PlainMove) -> Option<()> {
    debug_assert!(max_len < usize::from(u16::MAX));
    let head: [u8; 3] = buf.get(..3)?.try_into().ok()?;
    if head[0] | 0x20 != b'g' || head[2] != b' ' {
        return None;
    }
    let rapid = match head[1] {
        b'0' => true,
        b'1' => false,
        _ => return None,
    };
    let axes = &mut m.axes;
    axes.mask = 0;
    let mut comment = None;
    let mut i = 3;
    let end = loop {
        let Some(&c) = buf.get(i) else {
            break buf.len();
        };
        // The letters first: most bytes this loop looks at start a word. A table rather
        // than a `match`, which compiled to a chain of compares and a jump table.
        let slot = usize::from(PLAIN_SLOT[usize::from(c)]);
        if slot < 5 {
            let (value, used) = match short_number(buf, i + 1) {
                Some(n) => n,
                None => parse_number(&buf[i + 1..]).map(|(n, used)| (n.value, used))?,
            };
            axes.values[slot] = value;
            // Exact: a column past `max_len` (below 65535) never leaves this function.
            axes.columns[slot] = (i + 1) as u16;
            axes.mask |= 1 << slot;
            i += 1 + used;
            if i > max_len {
                return None;
            }
            match buf.get(i) {
                // The usual separator: step over it here rather than in another turn of
                // the loop.
                Some(b' ') => i += 1,
                None | Some(b';' | b'\r' | b'\n') => {}
                Some(_) => return None,
            }
            continue;
        }
        match c {
            b' ' | b'\r' => i += 1,
            b'\n' => break i,
            b';' => {
                let end = memchr::memchr(b'\n', &buf[i + 1..]).map_or(buf.len(), |k| i + 1 + k);
                comment = Some((i + 1, end));
                break end;
            }
            _ => return None,
        }
    };
    if end > max_len {
        return None;
    }
    m.rapid = rapid;
    m.comment = comment;
    m.end = end;
    Some(())
}

/// Slot in [`Axes`] of the letters a plain move may hold (X, Y, Z, E, F in either case),
/// 0xFF for every other byte.
const PLAIN_SLOT: [u8; 256] = {
    let mut slots = [0xFF; 256];
    let letters = *b"XYZEF";
    let mut i = 0;
    while i < letters.len() {
        slots[letters[i] as usize] = i as u8;
        slots[(letters[i] | 0x20) as usize] = i as u8;
        i += 1;
    }
    slots
};

fn trim_end(s: &[u8]) -> &[u8] {
    let mut end = s.len();
    while end > 0 && matches!(s[end - 1], b' ' | b'\t' | b'\r') {
        end -= 1;
    }
    &s[..end]
}

/// A parsed number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Number {
    pub value: f64,
    pub major: u32,
    pub minor: u8,
}

/// Powers of ten, all exact in an f64. A mantissa of at most 15 digits is exact too, and
/// IEEE division rounds correctly, so `mantissa / 10^k` is the correctly rounded value of
/// the decimal: the same f64 as `str::parse::<f64>`, to the bit. (Multiplying by 10^-k,
/// which is not exact, is slightly faster but can be one unit in the last place off.)
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Parses `[+-]digits[.digits]` at the start of `s`; returns the number and the bytes used.
#[inline(always)]
pub(crate) fn parse_number(s: &[u8]) -> Option<(Number, usize)> {
    let mut i = 0;
    let negative = match s.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    if let Some(fast) = parse_number_swar(s, i, negative) {
        return Some(fast);
    }
    let mut mantissa: u64 = 0;
    let mut digits = 0u32;
    let mut int_part: u64 = 0;
    while let Some(&d) = s.get(i) {
        if !d.is_ascii_digit() {
            break;
        }
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        digits += 1;
        i += 1;
    }
    let int_digits = digits;
    if digits > 0 {
        int_part = mantissa;
    }
    let mut frac_digits = 0u32;
    let mut minor = 0u8;
    if s.get(i) == Some(&b'.') {
        i += 1;
        while let Some(&d) = s.get(i) {
            if !d.is_ascii_digit() {
                break;
            }
            if frac_digits == 0 {
                minor = d - b'0';
            }
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            digits += 1;
            frac_digits += 1;
            i += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    let magnitude = if digits <= 15 {
        // Through i64: x86-64 converts signed integers in one instruction, unsigned not.
        (mantissa as i64) as f64 / POW10[frac_digits as usize]
    } else {
        // Too many digits for the exact path: rare, so let the standard library do it.
        let start = usize::from(negative || s.first() == Some(&b'+'));
        std::str::from_utf8(&s[start..i])
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(f64::MAX)
    };
    let major = if int_digits <= 9 {
        u32::try_from(int_part).unwrap_or(u32::MAX)
    } else {
        u32::MAX
    };
    Some((
        Number {
            value: if negative { -magnitude } else { magnitude },
            major,
            minor,
        },
        i,
    ))
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that equals `b` (bytes are independent: no carries).
#[inline(always)]
fn bytes_equal(x: u64, b: u8) -> u64 {
    let y = x ^ (ONES * u64::from(b));
    !(((y & !HIGH_BITS) + !HIGH_BITS) | y) & HIGH_BITS
}

/// A number of at most 7 characters (`[-]digits[.digits]`: `123.456`, `-.8`, `1800`)
/// at `start`, read from the 8 bytes there in one go, as (value, bytes used). The same
/// value as [`parse_number`] gives, to the bit. None when fewer than 8 bytes remain, when
/// the number is longer, or when it is not of that form; the caller then asks
/// [`parse_number`].
///
/// Branch-free but for the checks: the length of each number in a file is a coin toss for
/// the branch predictor, and where the number ends depends on the loaded word through a
/// few bit operations only, so the next word's load starts while this value is computed.
#[inline(always)]
pub(crate) fn short_number(buf: &[u8], start: usize) -> Option<(f64, usize)> {
    let bytes: [u8; 8] = buf.get(start..start + 8)?.try_into().ok()?;
    let x = u64::from_le_bytes(bytes);
    let negative = bytes[0] == b'-';
    // High bit of each byte that is a digit, or a dot.
    let low7 = x & !HIGH_BITS;
    let digit =
        (low7 + ONES * (0x80 - b'0' as u64)) & !(low7 + ONES * (0x80 - b'9' as u64 - 1)) & !x;
    let dot = bytes_equal(x, b'.');
    let token = digit | dot | u64::from(negative) << 7;
    let len = (!token & HIGH_BITS).trailing_zeros() / 8;
    if len == 8 {
        return None;
    }
    let keep = (1u64 << (8 * len)) - 1;
    let dot = dot & keep;
    // At least one digit, at most one dot.
    if digit & keep == 0 || dot & dot.wrapping_sub(1) != 0 {
        return None;
    }
    // Digit values; the sign and anything past the end become zeros.
    let d = x & keep & 0x0F0F_0F0F_0F0F_0F0F & !(u64::from(negative) * 0xFF);
    // Close the gap the dot leaves (or, without a dot, one past the end): what comes
    // before it moves up one byte, a zero leads.
    let p = if dot != 0 {
        dot.trailing_zeros() / 8
    } else {
        len
    };
    let before = (1u64 << (8 * p)) - 1;
    let d = ((d & before) << 8) | (d & !((before << 8) | 0xFF));
    let has_dot = u32::from(dot != 0);
    let positions = len + 1 - has_dot;
    let frac_digits = len - p - has_dot;
    // `positions` bytes hold the digits, most significant first.
    let v = d << (8 * (8 - positions));
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    let v = ((v & 0x0000_00FF_0000_00FF)
        .wrapping_mul(0x000F_4240_0000_0064)
        .wrapping_add(((v >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(0x0000_2710_0000_0001)))
        >> 32;
    // Through i64: x86-64 converts signed integers in one instruction, unsigned not.
    // `& 15` is no change (at most 6 digits follow the dot) but spares a bounds check.
    let magnitude = (v as i64) as f64 / POW10[(frac_digits & 15) as usize];
    let value = f64::from_bits(magnitude.to_bits() | u64::from(negative) << 63);
    Some((value, len as usize))
}

/// Eight ASCII digits at once (SWAR): the leading run of digits in the 8 bytes at `i`, as
/// (value, count). None when fewer than 8 bytes remain. Branch-free, which matters because
/// the length of every number in a file is a coin toss for the branch predictor.
#[inline(always)]
fn digit_run(s: &[u8], i: usize) -> Option<(u64, u32)> {
    let bytes: [u8; 8] = s.get(i..i + 8)?.try_into().ok()?;
    let x = u64::from_le_bytes(bytes);
    // A byte is a digit when its high nibble is 3 and its low nibble at most 9; neither
    // test carries from one byte into the next.
    let high = (x & 0xF0F0_F0F0_F0F0_F0F0) ^ 0x3030_3030_3030_3030;
    let low = ((x & 0x0F0F_0F0F_0F0F_0F0F) + 0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0;
    let count = (high | low).trailing_zeros() / 8;
    if count == 0 {
        return Some((0, 0));
    }
    // Keep the first `count` bytes (the low ones), moved up so that zeros lead.
    let v = (x & 0x0F0F_0F0F_0F0F_0F0F) << (8 * (8 - count));
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    let v = ((v & 0x0000_00FF_0000_00FF)
        .wrapping_mul(0x000F_4240_0000_0064)
        .wrapping_add(((v >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(0x0000_2710_0000_0001)))
        >> 32;
    Some((v, count))
}

/// The common case of [`parse_number`]: fewer than 8 digits on each side of the dot, with
/// 8 readable bytes after each run start. None hands the number to the scalar loop.
#[inline(always)]
fn parse_number_swar(s: &[u8], start: usize, negative: bool) -> Option<(Number, usize)> {
    let (int_part, int_digits) = digit_run(s, start)?;
    if int_digits == 8 {
        return None;
    }
    let mut i = start + int_digits as usize;
    let (mut mantissa, mut frac_digits, mut minor) = (int_part, 0u32, 0u8);
    if s.get(i) == Some(&b'.') {
        let (frac, n) = digit_run(s, i + 1)?;
        if n == 8 {
            return None;
        }
        frac_digits = n;
        if n > 0 {
            minor = s[i + 1] - b'0';
        }
        mantissa = int_part * POW10_INT[n as usize] + frac;
        i += 1 + n as usize;
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    // Through i64: x86-64 converts signed integers in one instruction, unsigned not.
    let magnitude = (mantissa as i64) as f64 / POW10[frac_digits as usize];
    Some((
        Number {
            value: if negative { -magnitude } else { magnitude },
            major: int_part as u32,
            minor,
        },
        i,
    ))
}

const POW10_INT: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tokens(line: &str) -> Vec<Token<'_>> {
        Lexer::new(line.as_bytes()).collect()
    }

    fn word(t: &Token<'_>) -> (char, f64) {
        match t {
            Token::Word(w) => (w.letter as char, w.value),
            other => panic!("expected a word, got {other:?}"),
        }
    }

    #[test]
    fn numbers_parse_like_the_standard_library_to_the_last_digit() {
        for s in [
            "0",
            "1",
            "-1.5",
            "+2.25",
            "12.345",
            ".5",
            "-.125",
            "3.",
            "0.0001",
            "123456.789",
        ] {
            let (n, used) = parse_number(s.as_bytes()).unwrap();
            assert_eq!(used, s.len(), "{s}");
            let expected: f64 = s.parse().unwrap();
            assert_eq!(n.value.to_bits(), expected.to_bits(), "{s}: {}", n.value);
        }
        assert_eq!(parse_number(b"-"), None);
        assert_eq!(parse_number(b"x"), None);
    }

    #[test]
    fn eight_at_a_time_agrees_with_one_at_a_time() {
        let mut cases = Vec::new();
        for int in [
            "",
            "0",
            "7",
            "12",
            "123",
            "1234567",
            "12345678",
            "123456789",
        ] {
            for frac in [
                None,
                Some(""),
                Some("5"),
                Some("03456"),
                Some("1234567"),
                Some("12345678"),
            ] {
                for tail in ["", " ", "X1 Y2 E3", ";c", "\r"] {
                    let mut t = int.to_string();
                    if let Some(f) = frac {
                        t.push('.');
                        t.push_str(f);
                    }
                    t.push_str(tail);
                    cases.push(t);
                }
            }
        }
        for case in &cases {
            for sign in ["", "-"] {
                let text = format!("{sign}{case}");
                let b = text.as_bytes();
                let start = sign.len();
                let scalar = {
                    // The scalar loop alone: pad nothing, so SWAR cannot run.
                    let short: Vec<u8> = b.to_vec();
                    let mut n = None;
                    if short.len() - start < 8
                        || parse_number_swar(&short, start, !sign.is_empty()).is_none()
                    {
                        n = parse_number(&short);
                    }
                    n
                };
                let swar = parse_number_swar(b, start, !sign.is_empty());
                if let (Some(fast), Some(slow)) = (swar, scalar.or_else(|| parse_number(b))) {
                    assert_eq!(fast.1, slow.1, "{text}");
                    assert_eq!(fast.0.value.to_bits(), slow.0.value.to_bits(), "{text}");
                    assert_eq!(
                        (fast.0.major, fast.0.minor),
                        (slow.0.major, slow.0.minor),
                        "{text}"
                    );
                }
                if let Some((n, used)) = parse_number(b) {
                    let expected: f64 = std::str::from_utf8(&b[..used]).unwrap().parse().unwrap();
                    assert_eq!(n.value.to_bits(), expected.to_bits(), "{text}");
                }
            }
        }
    }

    /// A G-code number: optional sign, up to 17 digits, optional dot and up to 17 more
    /// (at least one digit in all), followed by what may follow a number on a line.
    fn number_text() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just(""), Just("-"), Just("+")],
            "[0-9]{0,17}",
            proptest::option::of("[0-9]{0,17}"),
            prop_oneof![
                Just(""),
                Just(" "),
                Just(" Y1.5 E.2"),
                Just(";c"),
                Just("\r\n"),
                Just("X")
            ],
        )
            .prop_filter("a number has a digit", |(_, int, frac, _)| {
                !int.is_empty() || frac.as_ref().is_some_and(|f| !f.is_empty())
            })
            .prop_map(|(sign, int, frac, tail)| match frac {
                Some(frac) => format!("{sign}{int}.{frac}{tail}"),
                None => format!("{sign}{int}{tail}"),
            })
    }

    proptest! {
        /// Exactly equal, not within one unit in the last place: the same f64 bits.
        #[test]
        fn numbers_read_to_the_same_bits_as_the_standard_library(text in number_text()) {
            let b = text.as_bytes();
            let (n, used) = parse_number(b).expect("a number");
            let written = std::str::from_utf8(&b[..used]).unwrap();
            let expected: f64 = written.parse().unwrap();
            prop_assert_eq!(n.value.to_bits(), expected.to_bits(), "{} read as {}", written, n.value);
            // The one-load reader, where it applies, agrees to the bit and the byte.
            if let Some((value, len)) = short_number(b, 0) {
                prop_assert_eq!(len, used);
                prop_assert_eq!(value.to_bits(), expected.to_bits());
            }
        }

        #[test]
        fn the_one_load_reader_takes_every_short_number(
            sign in prop_oneof![Just(""), Just("-")],
            int in "[0-9]{0,6}",
            frac in proptest::option::of("[0-9]{0,6}"),
        ) {
            let text = match &frac {
                Some(f) => format!("{sign}{int}.{f}"),
                None => format!("{sign}{int}"),
            };
            prop_assume!(text.len() <= 7 && text.bytes().any(|b| b.is_ascii_digit()));
            // Followed by the next word, so that 8 bytes are there to load.
            let line = format!("{text} Y12.5 E0.1");
            let (value, len) = short_number(line.as_bytes(), 0).expect("short numbers take the fast read");
            prop_assert_eq!(len, text.len());
            prop_assert_eq!(value.to_bits(), text.parse::<f64>().unwrap().to_bits());
        }
    }

    #[test]
    fn command_numbers_keep_their_minor_digit() {
        let (n, _) = parse_number(b"38.2").unwrap();
        assert_eq!((n.major, n.minor), (38, 2));
    }

    #[test]
    fn a_slicer_line_splits_into_words_with_columns() {
        let t = tokens("G1 X10.5 y-2 E0.01 ; perimeter");
        assert_eq!(word(&t[0]), ('G', 1.0));
        assert_eq!(word(&t[1]), ('X', 10.5));
        assert_eq!(word(&t[2]), ('Y', -2.0));
        assert_eq!(word(&t[3]), ('E', 0.01));
        assert_eq!(t[4], Token::Comment(b" perimeter", 20));
        match t[2] {
            Token::Word(w) => assert_eq!(w.column, 10),
            _ => unreachable!(),
        }
    }

    #[test]
    fn line_numbers_checksums_and_percent_are_tolerated() {
        let t = tokens("%N12 G1X5*71");
        assert_eq!(t.len(), 3);
        assert_eq!(word(&t[0]), ('N', 12.0));
        assert_eq!(word(&t[2]), ('X', 5.0));
    }

    #[test]
    fn paren_comments_sit_between_words() {
        let t = tokens("G0 (rapid) X1");
        assert_eq!(t[1], Token::Comment(b"rapid", 4));
        assert_eq!(word(&t[2]), ('X', 1.0));
    }

    #[test]
    fn display_text_is_not_read_as_words() {
        let t = tokens("M117 Layer 3 X5 ; note");
        assert_eq!(t.len(), 3);
        assert_eq!(t[1], Token::Text(b"Layer 3 X5", 6));
    }

    #[test]
    fn grbl_system_commands_and_macros_are_whole_tokens() {
        assert_eq!(tokens("$32=1")[0], Token::Dollar(b"$32=1", 1));
        assert_eq!(
            tokens("START_PRINT BED=60")[0],
            Token::Macro(b"START_PRINT BED=60", 1)
        );
        assert_eq!(tokens("G1 X#5")[1], Token::Junk(4));
        assert_eq!(tokens("G28 X Y ; home")[1], Token::Flag(b'X', 5));
        assert_eq!(tokens("M862.3 P \"MK4\"")[1], Token::Text(b"MK4", 10));
    }
}
