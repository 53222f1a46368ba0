//! Knowledge for the agent's `search_knowledge` tool, the pure half (README.md, "Knowledge"):
//! what a document may be ([`check_content`], [`check_name`]), how it is cut into passages
//! ([`split_passages`]), how an untrusted query becomes words ([`query_terms`]) and the
//! full-text query each database gets from them ([`fts5_query`], [`websearch_query`]).
//! `store::knowledge` stores and searches; `admin::knowledge` is the HTTP edge.
//!
//! Invariants:
//! 1. Every passage is at most [`PASSAGE_MAX_CHARS`] characters, its heading trail included, and
//!    is cut between words (only a single word longer than a passage is cut inside).
//! 2. A query never reaches a database as syntax: only words made of letters and digits, each
//!    quoted (FTS5) or joined with `or` (Postgres `websearch_to_tsquery`), so quotes, `*`, `-`,
//!    `:`, parentheses, `NEAR` or `AND/OR/NOT` typed by a caller can neither fail the search
//!    nor change what it means.

/// Largest knowledge document, in bytes of UTF-8 (1 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Longest document name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Longest passage, in characters.
pub const PASSAGE_MAX_CHARS: usize = 800;

/// Longest heading trail carried at the top of a passage, in characters (the innermost
/// heading alone, shortened, when the trail is longer).
const HEADING_MAX_CHARS: usize = 200;

/// Most words of a query that are searched (the rest are ignored).
pub const MAX_QUERY_TERMS: usize = 24;

/// Longest word of a query that is searched, in characters (longer ones are noise).
const MAX_TERM_CHARS: usize = 64;

/// Characters of a query read at most.
const MAX_QUERY_CHARS: usize = 2000;

/// Why a document's content is refused (the admin API answers 422 with `content: {self}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// Nothing but whitespace.
    #[error("must not be empty or only whitespace")]
    Empty,
    /// Over [`MAX_DOCUMENT_BYTES`].
    #[error("must be at most 1 MiB ({MAX_DOCUMENT_BYTES} bytes), got {0} bytes")]
    TooLarge(usize),
    /// A NUL byte: a binary file, not text.
    #[error("looks binary: it contains NUL bytes (upload plain text or Markdown)")]
    Nul,
    /// Not UTF-8.
    #[error("must be UTF-8 text (this is not valid UTF-8; a binary file?)")]
    NotUtf8,
    /// More than a tenth of the characters are control characters (other than tab, line feed,
    /// carriage return and form feed).
    #[error("looks binary: too many control characters (upload plain text or Markdown)")]
    ControlChars,
}

/// Checks a document's bytes and returns its text (a leading byte-order mark removed): at most
/// [`MAX_DOCUMENT_BYTES`], no NUL byte, UTF-8, mostly printable, not blank.
pub fn check_content(bytes: &[u8]) -> Result<&str, ContentError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(ContentError::TooLarge(bytes.len()));
    }
    if bytes.contains(&0) {
        return Err(ContentError::Nul);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ContentError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (mut chars, mut control) = (0usize, 0usize);
    for c in text.chars() {
        chars += 1;
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{c}') {
            control += 1;
        }
    }
    if control * 10 > chars {
        return Err(ContentError::ControlChars);
    }
    if text.trim().is_empty() {
        return Err(ContentError::Empty);
    }
    Ok(text)
}

/// Why a document name is refused (the admin API answers 422 with `name: {self}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Missing or blank.
    #[error("must not be empty (give the document a name)")]
    Empty,
    /// Over [`MAX_NAME_CHARS`].
    #[error("must be at most {MAX_NAME_CHARS} characters")]
    TooLong,
    /// Line breaks or other control characters (the name is the source the agent is told).
    #[error("must not contain control characters")]
    Control,
}

/// Checks a document name and returns it trimmed.
pub fn check_name(name: &str) -> Result<&str, NameError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    Ok(name)
}

/// The one passage of an FAQ: the question, a line break, the answer.
pub fn faq_passage(question: &str, answer: &str) -> String {
    format!("{question}\n{answer}")
}

/// Splits plain text or Markdown into passages of at most [`PASSAGE_MAX_CHARS`] characters:
/// first on headings and blank lines (a paragraph that fits is never split, and consecutive
/// paragraphs under the same heading share a passage while they fit), then a paragraph too long
/// for one passage on sentences (and line breaks), then a sentence too long on words. A passage
/// under a Markdown heading (ATX `## Title`, or setext `Title` over `===`/`---`) starts with
/// that heading's trail (`Prices > Cleaning`) on its own line, so it is found by the heading's
/// words too. Fenced code is kept as text (a `#` line inside it is not a heading); the fence
/// lines and thematic breaks are dropped. Blank text gives no passage.
pub fn split_passages(text: &str) -> Vec<String> {
    let sections = sections(text);
    let mut out = Vec::new();
    for section in &sections {
        pack_section(&section.trail, &section.blocks, &mut out);
    }
    if out.is_empty() {
        // Headings and nothing else: the headings are the content.
        let trails: Vec<String> = sections
            .iter()
            .filter(|s| !s.trail.is_empty())
            .map(|s| s.trail.clone())
            .collect();
        pack_section("", &trails, &mut out);
    }
    out
}

/// Paragraphs under one heading trail.
struct Section {
    trail: String,
    blocks: Vec<String>,
}

fn sections(text: &str) -> Vec<Section> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut headings: Vec<(usize, String)> = Vec::new();
    let mut sections = vec![Section {
        trail: String::new(),
        blocks: Vec::new(),
    }];
    let mut block: Vec<&str> = Vec::new();
    let mut fence: Option<&str> = None;

    fn flush(block: &mut Vec<&str>, sections: &mut [Section]) {
        if !block.is_empty() {
            if let Some(s) = sections.last_mut() {
                s.blocks.push(block.join("\n"));
            }
            block.clear();
        }
    }
    fn enter(level: usize, title: &str, headings: &mut Vec<(usize, String)>) -> Section {
        headings.retain(|(l, _)| *l < level);
        headings.push((level, title.to_string()));
        Section {
            trail: trail(headings),
            blocks: Vec::new(),
        }
    }

    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
                flush(&mut block, &mut sections);
            } else if trimmed.is_empty() {
                flush(&mut block, &mut sections);
            } else {
                block.push(line.trim_end());
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(&trimmed[..3]);
            flush(&mut block, &mut sections);
            continue;
        }
        if let Some((level, title)) = atx_heading(trimmed) {
            flush(&mut block, &mut sections);
            if !title.is_empty() {
                sections.push(enter(level, title, &mut headings));
            }
            continue;
        }
        if let Some(level) = setext_underline(trimmed) {
            // One line of text over `===` or `---` is a heading; otherwise the line is a
            // thematic break (or decoration) and only separates paragraphs.
            if let [title] = block[..] {
                block.clear();
                sections.push(enter(level, title.trim(), &mut headings));
            } else {
                flush(&mut block, &mut sections);
            }
            continue;
        }
        if is_thematic_break(trimmed) {
            flush(&mut block, &mut sections);
            continue;
        }
        if trimmed.is_empty() {
            flush(&mut block, &mut sections);
        } else {
            block.push(line.trim_end());
        }
    }
    flush(&mut block, &mut sections);
    sections
}

/// `## Title ##` → (2, "Title"); up to six `#` followed by a space (or nothing).
fn atx_heading(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|&b| b == b'#').count();
    if level == 0 || level > 6 {
        return None;
    }
    let rest = &line[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let title = rest.trim();
    // An optional closing sequence of `#`s, after a space.
    let title = match title.trim_end_matches('#') {
        t if t.is_empty() => t,
        t if t.len() < title.len() && t.ends_with([' ', '\t']) => t.trim_end(),
        _ => title,
    };
    Some((level, title))
}

/// `===` (level 1) or `---` (level 2), nothing else on the line.
fn setext_underline(line: &str) -> Option<usize> {
    if !line.is_empty() && line.bytes().all(|b| b == b'=') {
        Some(1)
    } else if line.len() >= 2 && line.bytes().all(|b| b == b'-') {
        Some(2)
    } else {
        None
    }
}

/// `***`, `___`, `- - -` …: three or more of one of `*`, `_`, `-`, spaces allowed.
fn is_thematic_break(line: &str) -> bool {
    let marks: Vec<char> = line.chars().filter(|c| !c.is_whitespace()).collect();
    marks.len() >= 3 && matches!(marks[0], '*' | '_' | '-') && marks.iter().all(|&c| c == marks[0])
}

/// The heading trail `A > B > C`, or the innermost heading alone (shortened between words)
/// when the trail is longer than [`HEADING_MAX_CHARS`].
fn trail(headings: &[(usize, String)]) -> String {
    let full = headings
        .iter()
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join(" > ");
    if full.chars().count() <= HEADING_MAX_CHARS {
        return full;
    }
    let last = headings.last().map(|(_, t)| t.as_str()).unwrap_or_default();
    let mut packer = Packer::new(HEADING_MAX_CHARS);
    for word in last.split_whitespace() {
        packer.push(word, " ");
    }
    packer.out.into_iter().next().unwrap_or_default()
}

/// Packs one section's paragraphs into passages, each starting with the trail.
fn pack_section(trail: &str, blocks: &[String], out: &mut Vec<String>) {
    let prefix = if trail.is_empty() {
        String::new()
    } else {
        format!("{trail}\n")
    };
    let mut packer = Packer::new(PASSAGE_MAX_CHARS - prefix.chars().count());
    for block in blocks {
        if block.chars().count() <= packer.budget {
            packer.push(block, "\n\n");
            continue;
        }
        // Too long for one passage: it starts a passage of its own, cut on sentences.
        packer.flush();
        for line in block.split('\n') {
            for (j, sentence) in sentences(line).into_iter().enumerate() {
                packer.push(sentence, if j == 0 { "\n" } else { " " });
            }
        }
    }
    packer.flush();
    out.extend(packer.out.into_iter().map(|p| format!("{prefix}{p}")));
}

/// Greedy packing of pieces into strings of at most `budget` characters.
struct Packer {
    budget: usize,
    cur: String,
    cur_chars: usize,
    out: Vec<String>,
}

impl Packer {
    fn new(budget: usize) -> Self {
        Self {
            budget: budget.max(1),
            cur: String::new(),
            cur_chars: 0,
            out: Vec::new(),
        }
    }

    /// Adds `piece` after `sep`, or starts the next string with it when it does not fit; a
    /// piece longer than the budget is added word by word (a word longer than the budget is
    /// cut at character boundaries).
    fn push(&mut self, piece: &str, sep: &str) {
        let piece = piece.trim();
        if piece.is_empty() {
            return;
        }
        let chars = piece.chars().count();
        if chars > self.budget {
            let mut words = piece.split_whitespace();
            if piece.split_whitespace().nth(1).is_none() {
                self.flush();
                let all: Vec<char> = piece.chars().collect();
                for chunk in all.chunks(self.budget) {
                    self.push(&chunk.iter().collect::<String>(), " ");
                }
                return;
            }
            if let Some(first) = words.next() {
                self.push(first, sep);
            }
            for word in words {
                self.push(word, " ");
            }
            return;
        }
        let sep_chars = sep.chars().count();
        if self.cur.is_empty() {
            self.cur.push_str(piece);
            self.cur_chars = chars;
        } else if self.cur_chars + sep_chars + chars <= self.budget {
            self.cur.push_str(sep);
            self.cur.push_str(piece);
            self.cur_chars += sep_chars + chars;
        } else {
            self.flush();
            self.cur.push_str(piece);
            self.cur_chars = chars;
        }
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            self.out.push(std::mem::take(&mut self.cur));
            self.cur_chars = 0;
        }
    }
}

/// A line cut after each `.`, `!`, `?` or `…` (closing quotes and brackets kept with it) that
/// is followed by whitespace.
fn sentences(line: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &(_, c)) in chars.iter().enumerate() {
        if !matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？') {
            continue;
        }
        let mut j = i + 1;
        while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
        {
            j += 1;
        }
        if let Some(&(at, next)) = chars.get(j)
            && next.is_whitespace()
            && at > start
        {
            out.push(line[start..at].trim());
            start = at;
        }
    }
    out.push(line[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// Words that carry no meaning of their own in a caller's question, in English and Spanish
/// (the languages the businesses answer in); a query of only these searches nothing.
const STOP_WORDS: &[&str] = &[
    // English
    "about", "also", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "doesn", "don", "for", "from", "get", "had", "has", "have", "he",
    "hello", "her", "hey", "hi", "his", "how", "if", "in", "into", "is", "it", "its", "just",
    "know", "like", "may", "me", "might", "must", "my", "need", "no", "not", "of", "on", "or",
    "our", "please", "she", "should", "so", "some", "tell", "than", "thank", "thanks", "that",
    "the", "their", "them", "then", "there", "these", "they", "this", "those", "to", "too", "us",
    "very", "want", "was", "we", "were", "what", "when", "where", "which", "who", "why", "will",
    "with", "would", "you", "your", // Spanish
    "al", "como", "cómo", "con", "cual", "cuál", "cuales", "cuáles", "cuando", "cuándo", "cuanto",
    "cuánto", "cuanta", "cuánta", "cuantos", "cuántos", "cuantas", "cuántas", "de", "del", "donde",
    "dónde", "el", "él", "en", "es", "esta", "está", "estan", "están", "favor", "gracias", "hay",
    "hola", "la", "las", "le", "les", "lo", "los", "mi", "mis", "ni", "nos", "para", "pero", "por",
    "puede", "pueden", "puedo", "que", "qué", "quien", "quién", "quiero", "quisiera", "saber",
    "se", "si", "sí", "son", "su", "sus", "te", "tiene", "tienen", "tu", "tú", "un", "una", "unas",
    "unos", "usted", "ustedes", "yo",
];

/// The words of an untrusted query that are searched: runs of letters and digits, lowercased,
/// without stop words and one-letter words (one digit is kept), each once, in order, at most
/// [`MAX_QUERY_TERMS`]. Everything else (punctuation, quotes, operators) only separates words.
pub fn query_terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    let query: String = query.chars().take(MAX_QUERY_CHARS).collect();
    for word in query.split(|c: char| !c.is_alphanumeric()) {
        if terms.len() == MAX_QUERY_TERMS {
            break;
        }
        let word = word.to_lowercase();
        let chars = word.chars().count();
        let single_letter = chars == 1 && !word.chars().all(|c| c.is_numeric());
        if word.is_empty()
            || single_letter
            || chars > MAX_TERM_CHARS
            || STOP_WORDS.contains(&word.as_str())
            || terms.contains(&word)
        {
            continue;
        }
        terms.push(word);
    }
    terms
}

/// The FTS5 `MATCH` expression for `terms`: each a quoted string (`"` doubled inside), joined
/// with `OR`, so any word may match and bm25 ranks passages matching more (and rarer) words
/// first. Empty when `terms` is.
pub fn fts5_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The `websearch_to_tsquery` text for `terms`: the words joined with `or` (any may match).
/// The words are letters and digits only, so nothing in them is an operator.
pub fn websearch_query(terms: &[String]) -> String {
    terms.join(" or ")
}

/// The Postgres text search configuration for a client's language (created by the migration
/// `m20261129_000002_knowledge`): `warmline_spanish` for `es`/`es-*`, `warmline_english` for
/// `en`/`en-*`, `warmline_simple` (no stemming, no stop words) for any other language. Each
/// folds accents first (`unaccent`), as SQLite's `remove_diacritics 2` does.
pub fn text_search_config(language: &str) -> &'static str {
    let base = language.split(['-', '_']).next().unwrap_or(language);
    if base.eq_ignore_ascii_case("es") {
        "warmline_spanish"
    } else if base.eq_ignore_ascii_case("en") {
        "warmline_english"
    } else {
        "warmline_simple"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    /// Every word of `text` (outside headings) appears, whole, in some passage.
    fn assert_words_whole(text: &str, passages: &[String]) {
        let words: std::collections::HashSet<&str> =
            passages.iter().flat_map(|p| p.split_whitespace()).collect();
        for w in text.split_whitespace() {
            assert!(words.contains(w), "word {w:?} was cut or lost");
        }
    }

    #[test]
    fn short_plain_text_is_one_passage() {
        assert_eq!(
            split_passages("We open at nine.\nWe close at five."),
            ["We open at nine.\nWe close at five."]
        );
    }

    #[test]
    fn blank_text_gives_no_passage() {
        assert!(split_passages("").is_empty());
        assert!(split_passages(" \n\n\t \r\n").is_empty());
    }

    #[test]
    fn paragraphs_share_a_passage_while_they_fit_and_are_never_split_when_they_fit() {
        let para = |c: char| format!("{c}{}.", " word".repeat(70)); // 352 characters
        let text = format!("{}\n\n{}\n\n{}", para('A'), para('B'), para('C'));
        let passages = split_passages(&text);
        assert_eq!(passages.len(), 2, "{passages:#?}");
        assert_eq!(passages[0], format!("{}\n\n{}", para('A'), para('B')));
        assert_eq!(passages[1], para('C'));
    }

    #[test]
    fn a_long_paragraph_is_cut_on_sentences() {
        let sentence = |i: usize| format!("Sentence number {i} says{}.", " more".repeat(20));
        let text: Vec<String> = (0..12).map(sentence).collect();
        let text = text.join(" ");
        assert!(chars(&text) > PASSAGE_MAX_CHARS);
        let passages = split_passages(&text);
        assert!(passages.len() >= 2);
        for p in &passages {
            assert!(chars(p) <= PASSAGE_MAX_CHARS);
            assert!(p.starts_with("Sentence number"), "{p:?}");
            assert!(p.ends_with('.'), "cut inside a sentence: {p:?}");
        }
        assert_eq!(passages.join(" "), text);
    }

    #[test]
    fn a_long_sentence_is_cut_between_words() {
        let text = (0..400)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let passages = split_passages(&text);
        assert!(passages.len() >= 2);
        for p in &passages {
            assert!(chars(p) <= PASSAGE_MAX_CHARS);
        }
        assert_words_whole(&text, &passages);
        assert_eq!(passages.join(" "), text);
    }

    #[test]
    fn only_a_word_longer_than_a_passage_is_cut() {
        let long = "x".repeat(2000);
        let text = format!("before {long} after");
        let passages = split_passages(&text);
        assert!(passages.iter().all(|p| chars(p) <= PASSAGE_MAX_CHARS));
        assert_eq!(passages.concat().matches('x').count(), 2000);
        assert!(passages[0] == "before");
        assert!(passages.last().is_some_and(|p| p.ends_with(" after")));
    }

    #[test]
    fn multibyte_text_is_measured_in_characters() {
        let text = "ñandú café ".repeat(200);
        let passages = split_passages(&text);
        assert!(passages.iter().all(|p| chars(p) <= PASSAGE_MAX_CHARS));
        assert!(passages.iter().any(|p| chars(p) > 700), "packed full");
        assert_words_whole(&text, &passages);
    }

    #[test]
    fn passages_carry_their_heading_trail() {
        let text = "# Prices\nAll prices include tax.\n\n## Cleaning\nA cleaning is $80.\n\n\
                    ## Whitening\nWhitening is $300.\n\n# Hours\nMon-Fri 9-5.";
        assert_eq!(
            split_passages(text),
            [
                "Prices\nAll prices include tax.",
                "Prices > Cleaning\nA cleaning is $80.",
                "Prices > Whitening\nWhitening is $300.",
                "Hours\nMon-Fri 9-5."
            ]
        );
    }

    #[test]
    fn text_before_the_first_heading_has_no_trail() {
        assert_eq!(
            split_passages("Welcome.\n### Parking ###\nBehind the building."),
            ["Welcome.", "Parking\nBehind the building."]
        );
    }

    #[test]
    fn every_passage_of_a_long_section_carries_the_heading_within_the_limit() {
        let body = (0..300)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let passages = split_passages(&format!("## Walk-ins\n{body}"));
        assert!(passages.len() >= 2);
        for p in &passages {
            assert!(p.starts_with("Walk-ins\n"), "{p:?}");
            assert!(chars(p) <= PASSAGE_MAX_CHARS);
        }
    }

    #[test]
    fn a_very_long_heading_trail_is_shortened() {
        let title = "long ".repeat(100);
        let passages = split_passages(&format!("# {title}\nBody."));
        assert_eq!(passages.len(), 1);
        let (heading, body) = passages[0].split_once('\n').unwrap();
        assert!(chars(heading) <= HEADING_MAX_CHARS);
        assert!(heading.starts_with("long long"));
        assert_eq!(body, "Body.");
    }

    #[test]
    fn setext_headings_count_and_thematic_breaks_only_separate() {
        let text =
            "Services\n========\nCleanings and fillings.\n\nPrices\n---\n$80.\n\n---\n\nMore.";
        assert_eq!(
            split_passages(text),
            [
                "Services\nCleanings and fillings.",
                "Services > Prices\n$80.\n\nMore."
            ]
        );
    }

    #[test]
    fn hashes_that_are_not_headings_stay_text() {
        let text = "#hashtag stays\n\n```\n# not a heading\ncode\n```\n####### seven";
        let passages = split_passages(text);
        assert_eq!(
            passages,
            ["#hashtag stays\n\n# not a heading\ncode\n\n####### seven"]
        );
    }

    #[test]
    fn a_document_of_headings_only_is_kept() {
        assert_eq!(split_passages("# Menu\n## Tacos"), ["Menu\n\nMenu > Tacos"]);
    }

    #[test]
    fn windows_line_endings_split_like_unix_ones() {
        assert_eq!(
            split_passages("# A\r\none\r\n\r\ntwo"),
            split_passages("# A\none\n\ntwo")
        );
    }

    #[test]
    fn sentences_keep_closing_quotes_and_ignore_decimals() {
        assert_eq!(
            sentences("He said \"yes.\" Then $3.50 was paid! Ok"),
            ["He said \"yes.\"", "Then $3.50 was paid!", "Ok"]
        );
    }

    #[test]
    fn content_checks() {
        assert_eq!(check_content(b"  # Hi\n"), Ok("  # Hi\n"));
        assert_eq!(check_content("\u{feff}hola".as_bytes()), Ok("hola"));
        assert_eq!(check_content(b""), Err(ContentError::Empty));
        assert_eq!(check_content(b" \n\t\r\n"), Err(ContentError::Empty));
        assert_eq!(check_content(b"abc\0def"), Err(ContentError::Nul));
        assert_eq!(
            check_content(&[0x89, b'P', b'N', b'G', 0xff, 0xfe]),
            Err(ContentError::NotUtf8)
        );
        assert_eq!(
            check_content(b"\x01\x02\x03\x04ab"),
            Err(ContentError::ControlChars)
        );
        let tabs = "col\tcol\tcol\r\n".repeat(10);
        assert!(check_content(tabs.as_bytes()).is_ok());
        let big = "a".repeat(MAX_DOCUMENT_BYTES);
        assert!(check_content(big.as_bytes()).is_ok());
        let bigger = "a".repeat(MAX_DOCUMENT_BYTES + 1);
        assert_eq!(
            check_content(bigger.as_bytes()),
            Err(ContentError::TooLarge(MAX_DOCUMENT_BYTES + 1))
        );
    }

    #[test]
    fn name_checks() {
        assert_eq!(check_name("  prices.md "), Ok("prices.md"));
        assert_eq!(check_name(" "), Err(NameError::Empty));
        assert_eq!(
            check_name(&"n".repeat(MAX_NAME_CHARS + 1)),
            Err(NameError::TooLong)
        );
        assert!(check_name(&"ñ".repeat(MAX_NAME_CHARS)).is_ok());
        assert_eq!(check_name("a\nb"), Err(NameError::Control));
    }

    #[test]
    fn query_terms_are_words_without_stop_words() {
        assert_eq!(
            query_terms("Do you take walk-ins on Saturday?"),
            ["take", "walk", "ins", "saturday"]
        );
        assert_eq!(
            query_terms("¿Cuánto cuesta una limpieza el sábado?"),
            ["cuesta", "limpieza", "sábado"]
        );
        assert_eq!(
            query_terms("Suite 5, floor 12"),
            ["suite", "5", "floor", "12"]
        );
        assert_eq!(query_terms("parking PARKING Parking"), ["parking"]);
    }

    #[test]
    fn stop_words_and_punctuation_alone_give_no_terms() {
        for q in [
            "",
            "   ",
            "what is the",
            "¿Qué es?",
            "\"",
            "*",
            ")))",
            "-",
            ":",
            "a b c",
        ] {
            assert!(query_terms(q).is_empty(), "{q:?}");
        }
    }

    #[test]
    fn query_syntax_is_only_separation() {
        assert_eq!(
            query_terms("\"parking\" NEAR(lot* -fee) a:b AND OR NOT x^y"),
            ["parking", "near", "lot", "fee"]
        );
        let terms = query_terms("NEAR(\"walk-ins\" OR price:*)");
        assert_eq!(
            fts5_query(&terms),
            "\"near\" OR \"walk\" OR \"ins\" OR \"price\""
        );
        assert_eq!(websearch_query(&terms), "near or walk or ins or price");
        for t in &terms {
            assert!(t.chars().all(char::is_alphanumeric), "{t:?}");
        }
    }

    #[test]
    fn queries_are_bounded() {
        let many: String = (0..100).map(|i| format!("word{i} ")).collect();
        assert_eq!(query_terms(&many).len(), MAX_QUERY_TERMS);
        assert!(query_terms(&"z".repeat(MAX_TERM_CHARS + 1)).is_empty());
        assert_eq!(query_terms(&"z".repeat(MAX_TERM_CHARS)).len(), 1);
    }

    #[test]
    fn fts5_quotes_are_doubled() {
        assert_eq!(fts5_query(&["a\"b".to_string()]), "\"a\"\"b\"");
        assert_eq!(fts5_query(&[]), "");
    }

    #[test]
    fn text_search_configs_follow_the_language() {
        assert_eq!(text_search_config("es"), "warmline_spanish");
        assert_eq!(text_search_config("es-MX"), "warmline_spanish");
        assert_eq!(text_search_config("ES_es"), "warmline_spanish");
        assert_eq!(text_search_config("en-US"), "warmline_english");
        assert_eq!(text_search_config("fr"), "warmline_simple");
        assert_eq!(text_search_config("est"), "warmline_simple");
    }
}
