//! Tokenization, labels and truncation.
//!
//! # Sequence layout and labels
//!
//! Every example becomes `input_ids = prompt_ids ++ target_ids ++ [eos]` with
//! `labels[i] = -100` for the prompt positions and `labels[i] = input_ids[i]` for the target and
//! the EOS. Labels are *unshifted* (Hugging Face convention): the loss compares
//! `logits[:, t]` with `labels[:, t + 1]`, so the first learned label is the first target token,
//! predicted from the last prompt token. The EOS is learned, so the model learns to stop.
//! (The seed's `DataCollatorForLanguageModeling` with pad = eos replaced these labels by
//! `input_ids` and masked every EOS; we do what the seed intended instead.)
//!
//! Prompt and target are encoded separately, each with `add_special_tokens = false` (Falcon's
//! tokenizer adds none anyway), so the prompt/target boundary is always a token boundary. For
//! byte-level BPE tokenizers like Falcon's the prompt ends in "Answer:" and the target starts
//! with a space, which the pre-tokenizer splits anyway, so the ids equal those of encoding the
//! concatenated text.
//!
//! # Generic prompt/completion records
//!
//! `prompt` and `completion` are used verbatim: no template, no added space or newline between
//! them; the completion is followed by the EOS id. Prompt tokens get -100, completion tokens and
//! the EOS are learned. Under [`TruncationPolicy::KeepAnswer`] (and `Evidence`, which has no
//! evidence to use here) an over-long example loses tokens from the *start* of the prompt (the
//! end of a prompt is usually the instruction nearest to the answer); the kept prompt text is
//! the prompt from the first kept token's offset, and its ids are the tail of the prompt's
//! encoding. If the completion plus EOS alone exceed `max_length`, the prompt is dropped and the
//! completion is cut at the end (reported as an answer truncation). Under
//! [`TruncationPolicy::Seed`] the whole sequence is cut at the right, as for FinQA.
//!
//! # Conversations
//!
//! A conversation is rendered with the model's chat template ([`crate::chat`]) and tokenized
//! whole (`add_special_tokens = false`: the template writes the special tokens it wants, as
//! `apply_chat_template` does). A token is learned when its first byte lies in an assistant
//! turn; every other label is -100. No EOS id is appended: the template closes each turn.
//! An over-long conversation is cut at the right (as Hugging Face trainers do); it is dropped
//! when no learned token is left. `prompt_len` is the position of the first learned token and
//! `target_text` the first assistant message, which is what generation-based evaluation
//! compares.
//!
//! # Bounded work for any record
//!
//! No more text is tokenized than can reach a sequence of `max_length` tokens: each text is
//! cut first to [`text_bound`] bytes (from the end a policy never keeps: the tail of a context
//! piece, of a question or answer, the head of a prompt that keep-answer shortens from its
//! start). A token covers at most the tokenizer's longest vocabulary entry, so the kept bytes
//! always hold more than `max_length` tokens and every kept token is the one whole-text
//! tokenization would give; memory and time stay proportional to `max_length`, not to the
//! record (a 52 MB record used to take 15 GB to tokenize).
//!
//! # Truncation policies for FinQA
//!
//! * `KeepAnswer` (default): the question, the answer and the EOS are never cut. When the
//!   sequence is longer than `max_length`, the context pieces (pre_text, table, post_text) are
//!   shortened from their ends, longest first: each piece keeps at most `c` of its tokens, with
//!   the largest `c` that fits ("water filling"), so a short table usually survives whole while
//!   long texts lose their tails. The cut pieces are joined in the same template and the prompt
//!   is re-encoded as one text (its ids equal `tokenizer.encode(prompt_text)`); if that is
//!   still too long (token merges across the cut) the budget shrinks by the excess and the cut
//!   is redone. A record whose question and answer alone do not fit is dropped and reported.
//! * `Seed`: the seed's behaviour, for comparison: `prompt ++ target ++ [eos]` cut at the right
//!   to `max_length`, which loses the answer whenever the prompt is long.
//! * `Evidence`: the context is the gold supporting facts (`gold_inds`) in document order, one
//!   piece per fact, in the same template; then as `KeepAnswer`. Records without gold facts use
//!   the full context under `KeepAnswer` (counted as evidence fallbacks).

use std::str::FromStr;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::chat::{ChatTemplate, Conversation};
use crate::error::{DataError, Result};
use crate::load::LoadReport;
use crate::prompt::{context_pieces, prompt_from_pieces, target_text};
use crate::record::{PromptCompletion, Record};

/// Label value ignored by the loss.
pub const IGNORE_INDEX: i32 = -100;

/// How an over-long example is cut (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TruncationPolicy {
    /// Cut the context, never the question, answer or EOS.
    #[default]
    KeepAnswer,
    /// The seed's right truncation of the whole sequence.
    Seed,
    /// Use the gold supporting facts as the context.
    Evidence,
}

impl TruncationPolicy {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            TruncationPolicy::KeepAnswer => "keep-answer",
            TruncationPolicy::Seed => "seed",
            TruncationPolicy::Evidence => "evidence",
        }
    }
}

impl std::fmt::Display for TruncationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TruncationPolicy {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "keep-answer" | "keep_answer" => Ok(TruncationPolicy::KeepAnswer),
            "seed" => Ok(TruncationPolicy::Seed),
            "evidence" => Ok(TruncationPolicy::Evidence),
            _ => Err(DataError::UnknownName {
                what: "truncation policy",
                value: s.to_string(),
                expected: "keep-answer, seed, evidence",
            }),
        }
    }
}

/// Options of the tokenization stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeOptions {
    /// Longest sequence (prompt + target + EOS), in tokens.
    pub max_length: usize,
    /// The EOS id appended after the target (Falcon: 11).
    pub eos_id: u32,
    /// How to cut over-long examples.
    pub policy: TruncationPolicy,
}

impl TokenizeOptions {
    fn validate(&self) -> Result<()> {
        if self.max_length < 2 {
            return Err(DataError::InvalidOption {
                name: "max_length",
                message: format!("must be at least 2, got {}", self.max_length),
            });
        }
        Ok(())
    }
}

/// One tokenized training example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizedExample {
    /// The record id.
    pub id: String,
    /// `prompt_ids ++ target_ids ++ [eos]`, possibly cut; length <= max_length.
    pub input_ids: Vec<u32>,
    /// Same length as `input_ids`: -100 on the prompt, the token id on target and EOS.
    pub labels: Vec<i32>,
    /// Number of prompt tokens (the first `prompt_len` labels are -100).
    pub prompt_len: usize,
    /// Target tokens (answer + EOS) before any cut.
    pub full_target_len: usize,
    /// True when some answer or EOS token was cut off.
    pub answer_truncated: bool,
    /// True when the context (or, for prompt/completion, the prompt) was shortened.
    pub context_trimmed: bool,
    /// True when the prompt's context is the gold evidence.
    pub used_evidence: bool,
    /// Tokens of the whole example (prompt + target + EOS) before any cut, so that
    /// `full_len - input_ids.len()` is what truncation removed.
    #[serde(default)]
    pub full_len: usize,
    /// The prompt text the ids come from (after any cut).
    pub prompt_text: String,
    /// The target text (without EOS).
    pub target_text: String,
}

impl TokenizedExample {
    /// The prompt ids (what generation starts from).
    pub fn prompt_ids(&self) -> &[u32] {
        &self.input_ids[..self.prompt_len.min(self.input_ids.len())]
    }

    /// Tokens truncation removed from this example (context, or answer under `seed`).
    pub fn tokens_cut(&self) -> usize {
        self.full_len.saturating_sub(self.input_ids.len())
    }

    /// Number of learned labels (target tokens incl. EOS that were kept).
    pub fn learned_len(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// An example left out because it cannot be fitted under the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedExample {
    /// The record id.
    pub id: String,
    /// Why.
    pub reason: String,
}

/// The tokenized data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizedSet {
    /// Examples in input order (dropped ones left out).
    pub examples: Vec<TokenizedExample>,
    /// Examples that could not be fitted.
    pub dropped: Vec<DroppedExample>,
    /// Records that asked for evidence but had none (used the full context instead).
    pub evidence_fallbacks: usize,
    /// The options used.
    pub options: TokenizeOptions,
    /// Wall-clock seconds spent tokenizing.
    pub seconds: f64,
}

impl TokenizedSet {
    /// Examples tokenized per second (input examples / wall time).
    pub fn examples_per_second(&self) -> f64 {
        let n = (self.examples.len() + self.dropped.len()) as f64;
        // A finite number even for an empty set or a clock that did not move.
        n / self.seconds.max(1e-9)
    }

    /// Sequence lengths, in example order (for the sampler).
    pub fn lengths(&self) -> Vec<usize> {
        self.examples.iter().map(|e| e.input_ids.len()).collect()
    }

    /// Number of examples that lost answer or EOS tokens.
    pub fn answers_truncated(&self) -> usize {
        self.examples.iter().filter(|e| e.answer_truncated).count()
    }
}

/// Per-item result: the example, or why it was dropped.
type ItemResult = std::result::Result<TokenizedExample, DroppedExample>;

/// Tokenizes FinQA records in parallel (rayon), keeping input order.
pub fn tokenize_records(
    tokenizer: &Tokenizer,
    records: &[Record],
    options: &TokenizeOptions,
) -> Result<TokenizedSet> {
    options.validate()?;
    let start = Instant::now();
    let bound = text_bound(tokenizer, options.max_length);
    let items: Vec<Result<(ItemResult, bool)>> = records
        .par_iter()
        .map(|r| tokenize_record_inner(tokenizer, r, options, bound))
        .collect();
    let mut set = empty_set(options);
    for item in items {
        let (res, fallback) = item?;
        set.evidence_fallbacks += usize::from(fallback);
        push(&mut set, res);
    }
    set.seconds = start.elapsed().as_secs_f64();
    Ok(set)
}

/// Tokenizes prompt/completion pairs in parallel (rayon), keeping input order.
pub fn tokenize_pairs(
    tokenizer: &Tokenizer,
    pairs: &[PromptCompletion],
    options: &TokenizeOptions,
) -> Result<TokenizedSet> {
    options.validate()?;
    let start = Instant::now();
    let bound = text_bound(tokenizer, options.max_length);
    let items: Vec<Result<ItemResult>> = pairs
        .par_iter()
        .map(|p| tokenize_pair(tokenizer, p, options, bound))
        .collect();
    let mut set = empty_set(options);
    for item in items {
        push(&mut set, item?);
    }
    if options.policy == TruncationPolicy::Evidence {
        set.evidence_fallbacks = set.examples.len() + set.dropped.len();
    }
    set.seconds = start.elapsed().as_secs_f64();
    Ok(set)
}

/// Tokenizes conversations rendered with `template`, in parallel, keeping input order.
pub fn tokenize_conversations(
    tokenizer: &Tokenizer,
    conversations: &[Conversation],
    options: &TokenizeOptions,
    template: &ChatTemplate,
) -> Result<TokenizedSet> {
    options.validate()?;
    let start = Instant::now();
    let bound = text_bound(tokenizer, options.max_length);
    let items: Vec<Result<ItemResult>> = conversations
        .par_iter()
        .map(|c| tokenize_conversation(tokenizer, c, options, template, bound))
        .collect();
    let mut set = empty_set(options);
    for item in items {
        push(&mut set, item?);
    }
    set.seconds = start.elapsed().as_secs_f64();
    Ok(set)
}

/// Tokenizes whatever a [`LoadReport`] holds (records, pairs or conversations); conversations
/// need the model's chat template.
pub fn tokenize_report(
    tokenizer: &Tokenizer,
    report: &LoadReport,
    options: &TokenizeOptions,
    chat: Option<&ChatTemplate>,
) -> Result<TokenizedSet> {
    if !report.conversations.is_empty() {
        let Some(template) = chat else {
            return Err(DataError::ChatTemplate {
                source_name: report.path.display().to_string(),
                message: "the file holds conversations, and the model has no chat template \
                          (tokenizer_config.json with `chat_template`)"
                    .into(),
            });
        };
        tokenize_conversations(tokenizer, &report.conversations, options, template)
    } else if report.pairs.is_empty() {
        tokenize_records(tokenizer, &report.records, options)
    } else {
        tokenize_pairs(tokenizer, &report.pairs, options)
    }
}

/// Bytes of one text that can matter for a sequence of `max_length` tokens: `max_length + 1`
/// tokens of the tokenizer's longest vocabulary entry, doubled for normalizers that drop
/// characters. Longer texts are cut to this before they are tokenized (see the module docs).
pub fn text_bound(tokenizer: &Tokenizer, max_length: usize) -> usize {
    let longest = tokenizer
        .get_vocab(true)
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(1)
        .max(4);
    max_length
        .saturating_add(1)
        .saturating_mul(longest)
        .saturating_mul(2)
}

/// The first `n` bytes of `text` (fewer, to end on a character boundary).
fn head(text: &str, n: usize) -> &str {
    if text.len() <= n {
        return text;
    }
    let mut end = n;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The last `n` bytes of `text` (fewer, to start on a character boundary).
fn tail(text: &str, n: usize) -> &str {
    if text.len() <= n {
        return text;
    }
    let mut start = text.len() - n;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn empty_set(options: &TokenizeOptions) -> TokenizedSet {
    TokenizedSet {
        examples: Vec::new(),
        dropped: Vec::new(),
        evidence_fallbacks: 0,
        options: *options,
        seconds: 0.0,
    }
}

fn push(set: &mut TokenizedSet, res: ItemResult) {
    match res {
        Ok(e) => set.examples.push(e),
        Err(d) => set.dropped.push(d),
    }
}

/// Tokenizes one FinQA record. `Ok(Err(_))` means the record was dropped (cannot fit).
pub fn tokenize_record(
    tokenizer: &Tokenizer,
    record: &Record,
    options: &TokenizeOptions,
) -> Result<std::result::Result<TokenizedExample, DroppedExample>> {
    options.validate()?;
    let bound = text_bound(tokenizer, options.max_length);
    tokenize_record_inner(tokenizer, record, options, bound).map(|(r, _)| r)
}

struct Encoded {
    ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
}

fn encode(tokenizer: &Tokenizer, id: &str, text: &str) -> Result<Encoded> {
    let enc = tokenizer
        .encode(text, false)
        .map_err(|e| DataError::Tokenizer {
            id: id.to_string(),
            message: e.to_string(),
        })?;
    Ok(Encoded {
        ids: enc.get_ids().to_vec(),
        offsets: enc.get_offsets().to_vec(),
    })
}

fn build_example(
    id: &str,
    prompt_ids: Vec<u32>,
    target_ids: &[u32],
    eos_id: u32,
    max_length: usize,
    prompt_text: String,
    target_text: String,
) -> TokenizedExample {
    let full_target_len = target_ids.len() + 1;
    let full_len = prompt_ids.len() + full_target_len;
    let mut input_ids = prompt_ids;
    let prompt_len = input_ids.len().min(max_length);
    input_ids.extend_from_slice(target_ids);
    input_ids.push(eos_id);
    let answer_truncated = input_ids.len() > max_length;
    input_ids.truncate(max_length);
    let labels = input_ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if i < prompt_len {
                IGNORE_INDEX
            } else {
                t as i32
            }
        })
        .collect();
    TokenizedExample {
        id: id.to_string(),
        input_ids,
        labels,
        prompt_len,
        full_target_len,
        answer_truncated,
        context_trimmed: false,
        used_evidence: false,
        full_len,
        prompt_text,
        target_text,
    }
}

fn tokenize_record_inner(
    tokenizer: &Tokenizer,
    record: &Record,
    options: &TokenizeOptions,
    bound: usize,
) -> Result<(ItemResult, bool)> {
    let Some((answer, _)) = record.resolved_answer() else {
        return Ok((
            Err(DroppedExample {
                id: record.id.clone(),
                reason: "no answer".to_string(),
            }),
            false,
        ));
    };
    let target = target_text(head(&answer, bound));
    let target_ids = encode(tokenizer, &record.id, &target)?.ids;
    let question = head(&record.question, bound);
    let bounded = |pieces: Vec<String>| -> Vec<String> {
        pieces
            .into_iter()
            .map(|p| match head(&p, bound).len() {
                n if n < p.len() => p[..n].to_string(),
                _ => p,
            })
            .collect()
    };
    match options.policy {
        TruncationPolicy::Seed => {
            let prompt = prompt_from_pieces(&bounded(context_pieces(record)), question);
            let prompt_ids = encode(tokenizer, &record.id, &prompt)?.ids;
            let n_prompt = prompt_ids.len();
            let mut ex = build_example(
                &record.id,
                prompt_ids,
                &target_ids,
                options.eos_id,
                options.max_length,
                prompt,
                target,
            );
            ex.context_trimmed = n_prompt > options.max_length;
            Ok((Ok(ex), false))
        }
        TruncationPolicy::KeepAnswer | TruncationPolicy::Evidence => {
            let facts = if options.policy == TruncationPolicy::Evidence {
                record.gold_facts_in_document_order()
            } else {
                Vec::new()
            };
            let fallback = options.policy == TruncationPolicy::Evidence && facts.is_empty();
            let used_evidence = !facts.is_empty();
            let pieces: Vec<String> = bounded(if used_evidence {
                facts.iter().map(|f| f.text.clone()).collect()
            } else {
                context_pieces(record)
            });
            let res = keep_answer(
                tokenizer,
                &record.id,
                &pieces,
                question,
                &target_ids,
                target,
                options,
            )?;
            let res = res.map(|mut e| {
                e.used_evidence = used_evidence;
                e
            });
            Ok((res, fallback))
        }
    }
}

/// The largest cap `c` with `sum(min(len_i, c)) <= budget` (water filling), or `None` when
/// everything fits uncapped.
fn water_fill_cap(lengths: &[usize], budget: usize) -> Option<usize> {
    let total: usize = lengths.iter().sum();
    if total <= budget {
        return None;
    }
    let (mut lo, mut hi) = (0usize, lengths.iter().copied().max().unwrap_or(0));
    // Invariant: cap lo fits; cap hi does not (total > budget).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let used: usize = lengths.iter().map(|&l| l.min(mid)).sum();
        if used <= budget {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// Byte ranges of the pieces inside `prompt_from_pieces(pieces, _)`.
fn piece_ranges(pieces: &[String]) -> Vec<(usize, usize)> {
    let mut at = crate::prompt::CONTEXT_HEADER.len();
    pieces
        .iter()
        .map(|p| {
            let r = (at, at + p.len());
            at += p.len() + 1; // the "\n" joiner
            r
        })
        .collect()
}

/// For each piece, the end offsets (relative to the piece) of the prompt tokens that start
/// inside it, in order: `ends[i][k - 1]` is where a cut keeping `k` tokens of piece `i` falls.
fn piece_token_ends(enc: &Encoded, ranges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    ranges
        .iter()
        .map(|&(a, b)| {
            enc.offsets
                .iter()
                .filter(|&&(s, _)| s >= a && s < b)
                .map(|&(_, e)| e.clamp(a, b) - a)
                .collect()
        })
        .collect()
}

/// The prefix of `text` covered by its first `keep` tokens (`ends` from [`piece_token_ends`]),
/// cut at a char boundary and without trailing whitespace.
fn prefix_by_tokens<'a>(text: &'a str, ends: &[usize], keep: usize) -> &'a str {
    if keep >= ends.len() {
        return text;
    }
    if keep == 0 {
        return "";
    }
    let mut end = ends[keep - 1].min(text.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim_end()
}

fn keep_answer(
    tokenizer: &Tokenizer,
    id: &str,
    pieces: &[String],
    question: &str,
    target_ids: &[u32],
    target: String,
    options: &TokenizeOptions,
) -> Result<ItemResult> {
    let max_length = options.max_length;
    let full_target = target_ids.len() + 1;
    let prompt = prompt_from_pieces(pieces, question);
    let prompt_enc = encode(tokenizer, id, &prompt)?;
    if prompt_enc.ids.len() + full_target <= max_length {
        return Ok(Ok(build_example(
            id,
            prompt_enc.ids,
            target_ids,
            options.eos_id,
            max_length,
            prompt,
            target,
        )));
    }
    let drop = |reason: String| {
        Ok(Err(DroppedExample {
            id: id.to_string(),
            reason,
        }))
    };
    if full_target >= max_length {
        return drop(format!(
            "answer + EOS take {full_target} tokens, max_length is {max_length}"
        ));
    }
    let prompt_budget = max_length - full_target;
    // Token counts per piece come from the full prompt's encoding (tokens attributed to the
    // piece their first byte lies in); the rest is the frame.
    let ends = piece_token_ends(&prompt_enc, &piece_ranges(pieces));
    let lengths: Vec<usize> = ends.iter().map(Vec::len).collect();
    let frame_len = prompt_enc.ids.len() - lengths.iter().sum::<usize>();
    let mut context_budget = prompt_budget.saturating_sub(frame_len);
    loop {
        let cap = water_fill_cap(&lengths, context_budget).unwrap_or(usize::MAX);
        let cut: Vec<&str> = pieces
            .iter()
            .zip(&ends)
            .map(|(p, e)| prefix_by_tokens(p, e, cap))
            .collect();
        let text = prompt_from_pieces(&cut, question);
        let enc = encode(tokenizer, id, &text)?;
        if enc.ids.len() <= prompt_budget {
            let mut ex = build_example(
                id,
                enc.ids,
                target_ids,
                options.eos_id,
                max_length,
                text,
                target,
            );
            ex.context_trimmed = true;
            ex.full_len = prompt_enc.ids.len() + full_target;
            return Ok(Ok(ex));
        }
        if context_budget == 0 {
            return drop(format!(
                "the prompt without context ({} tokens) and the answer + EOS ({full_target}) \
                 exceed max_length {max_length}",
                enc.ids.len()
            ));
        }
        // Merges across the cut made it longer than the sum of parts: shrink and retry.
        let excess = enc.ids.len() - prompt_budget;
        context_budget = context_budget.saturating_sub(excess.max(1));
    }
}

fn tokenize_pair(
    tokenizer: &Tokenizer,
    pair: &PromptCompletion,
    options: &TokenizeOptions,
    bound: usize,
) -> Result<ItemResult> {
    let max_length = options.max_length;
    let completion = head(&pair.completion, bound);
    // Keep-answer shortens a prompt from its start, the seed's truncation from its end.
    let prompt = match options.policy {
        TruncationPolicy::Seed => head(&pair.prompt, bound),
        _ => tail(&pair.prompt, bound),
    };
    let target_ids = encode(tokenizer, &pair.id, completion)?.ids;
    let prompt_enc = encode(tokenizer, &pair.id, prompt)?;
    let n_prompt = prompt_enc.ids.len();
    let full = n_prompt + target_ids.len() + 1;
    let (prompt_ids, prompt_text, trimmed) =
        if full <= max_length || options.policy == TruncationPolicy::Seed {
            (prompt_enc.ids, prompt.to_string(), full > max_length)
        } else {
            let budget = max_length.saturating_sub(target_ids.len() + 1);
            let skip = n_prompt - budget.min(n_prompt);
            if skip >= n_prompt {
                (Vec::new(), String::new(), n_prompt > 0)
            } else {
                let mut start = prompt_enc.offsets[skip].0.min(prompt.len());
                while start < prompt.len() && !prompt.is_char_boundary(start) {
                    start += 1;
                }
                (
                    prompt_enc.ids[skip..].to_vec(),
                    prompt[start..].to_string(),
                    true,
                )
            }
        };
    let mut ex = build_example(
        &pair.id,
        prompt_ids,
        &target_ids,
        options.eos_id,
        max_length,
        prompt_text,
        completion.to_string(),
    );
    ex.context_trimmed = trimmed;
    ex.full_len = full;
    Ok(Ok(ex))
}

/// The messages of `conv` that can reach the first `bound` bytes of text: contents cut so
/// that all of them together hold at most `bound` bytes; later messages are left out (they
/// would render after the cut).
fn bounded_conversation(conv: &Conversation, bound: usize) -> Conversation {
    let mut left = bound;
    let mut messages = Vec::new();
    for m in &conv.messages {
        if left == 0 {
            break;
        }
        let content = head(&m.content, left);
        left -= content.len();
        messages.push(crate::chat::ChatMessage {
            role: m.role.clone(),
            content: content.to_string(),
        });
    }
    Conversation {
        id: conv.id.clone(),
        messages,
    }
}

fn tokenize_conversation(
    tokenizer: &Tokenizer,
    conv: &Conversation,
    options: &TokenizeOptions,
    template: &ChatTemplate,
    bound: usize,
) -> Result<ItemResult> {
    let max_length = options.max_length;
    let conv = bounded_conversation(conv, bound);
    let drop = |reason: String| {
        Ok(Err(DroppedExample {
            id: conv.id.clone(),
            reason,
        }))
    };
    if !conv.messages.iter().any(|m| m.role == "assistant") {
        return drop(format!(
            "no assistant message starts within the first {max_length} tokens"
        ));
    }
    let rendered = template.render_conversation(&conv)?;
    let enc = encode(tokenizer, &conv.id, &rendered.text)?;
    let learned_at = |start: usize| rendered.assistant_spans.iter().any(|r| r.contains(&start));
    let learned: Vec<bool> = enc.offsets.iter().map(|&(s, _)| learned_at(s)).collect();
    let full_target_len = learned.iter().filter(|&&l| l).count();
    let n = enc.ids.len().min(max_length);
    let kept_learned = learned[..n].iter().filter(|&&l| l).count();
    if kept_learned == 0 {
        return drop(format!(
            "no assistant token within max_length {max_length} ({} tokens)",
            enc.ids.len()
        ));
    }
    let input_ids = enc.ids[..n].to_vec();
    let labels: Vec<i32> = input_ids
        .iter()
        .zip(&learned)
        .map(|(&t, &l)| if l { t as i32 } else { IGNORE_INDEX })
        .collect();
    let prompt_len = learned.iter().position(|&l| l).unwrap_or(n);
    let first_span = rendered.assistant_spans[0].start;
    let first_answer = &conv.messages[rendered.assistant_messages[0]].content;
    Ok(Ok(TokenizedExample {
        id: conv.id.clone(),
        input_ids,
        labels,
        prompt_len,
        full_target_len,
        full_len: enc.ids.len(),
        answer_truncated: kept_learned < full_target_len,
        context_trimmed: enc.ids.len() > max_length,
        used_evidence: false,
        prompt_text: rendered.text[..first_span].to_string(),
        target_text: first_answer.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::water_fill_cap;

    #[test]
    fn water_fill_finds_largest_cap() {
        assert_eq!(water_fill_cap(&[10, 2, 50], 100), None);
        // cap 24: 10 + 2 + 24 = 36 <= 36; cap 25 gives 37.
        assert_eq!(water_fill_cap(&[10, 2, 50], 36), Some(24));
        assert_eq!(water_fill_cap(&[10, 2, 50], 0), Some(0));
        // cap 5: 5 + 2 + 5 = 12 <= 13; cap 6 gives 14.
        assert_eq!(water_fill_cap(&[10, 2, 50], 13), Some(5));
    }
}
