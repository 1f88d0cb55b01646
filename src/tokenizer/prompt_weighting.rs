//! A1111's emphasis syntax: `(text)` ×1.1, `[text]` ÷1.1, `(text:1.3)` explicit,
//! nesting multiplies, `\(` `\)` `\[` `\]` are literal brackets.

const EMPHASIS: f32 = 1.1;

#[derive(Debug, Clone, PartialEq)]
pub struct WeightedSegment {
    pub text: String,
    pub weight: f32,
}

pub fn parse_weighted_prompt(prompt: &str) -> Vec<WeightedSegment> {
    let mut segments: Vec<WeightedSegment> = Vec::new();
    // Each open bracket: (index of the first segment inside it, its kind).
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, segments: &mut Vec<WeightedSegment>| {
        if !text.is_empty() {
            segments.push(WeightedSegment { text: std::mem::take(text), weight: 1.0 });
        }
    };
    let scale = |segments: &mut Vec<WeightedSegment>, from: usize, factor: f32| {
        for segment in &mut segments[from..] {
            segment.weight *= factor;
        }
    };
    let chars: Vec<char> = prompt.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() && "()[]\\".contains(chars[i + 1]) => {
                text.push(chars[i + 1]);
                i += 1;
            }
            '(' => {
                flush(&mut text, &mut segments);
                round.push(segments.len());
            }
            '[' => {
                flush(&mut text, &mut segments);
                square.push(segments.len());
            }
            ')' if !round.is_empty() => {
                // `(text:1.3)`: an explicit weight replaces the ×1.1.
                let explicit = text.rfind(':').and_then(|colon| {
                    text[colon + 1..].trim().parse::<f32>().ok().map(|w| (colon, w))
                });
                let factor = match explicit {
                    Some((colon, weight)) => {
                        text.truncate(colon);
                        weight
                    }
                    None => EMPHASIS,
                };
                flush(&mut text, &mut segments);
                let start = round.pop().unwrap_or(0);
                scale(&mut segments, start, factor);
            }
            ']' if !square.is_empty() => {
                flush(&mut text, &mut segments);
                let start = square.pop().unwrap_or(0);
                scale(&mut segments, start, 1.0 / EMPHASIS);
            }
            _ => text.push(c),
        }
        i += 1;
    }
    flush(&mut text, &mut segments);
    // Unclosed brackets still emphasise what follows them, as A1111 does.
    for start in round {
        scale(&mut segments, start, EMPHASIS);
    }
    for start in square {
        scale(&mut segments, start, 1.0 / EMPHASIS);
    }
    // Merge neighbours of equal weight so plain prompts tokenize in one piece.
    let mut merged: Vec<WeightedSegment> = Vec::new();
    for segment in segments {
        match merged.last_mut() {
            Some(last) if last.weight == segment.weight => last.text.push_str(&segment.text),
            _ => merged.push(segment),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(text: &str, weight: f32) -> WeightedSegment {
        WeightedSegment { text: text.into(), weight }
    }

    #[test]
    fn plain_prompt_is_one_segment_of_weight_one() {
        assert_eq!(parse_weighted_prompt("a cat, on a mat!"), vec![seg("a cat, on a mat!", 1.0)]);
    }

    #[test]
    fn emphasis_forms_and_nesting() {
        assert_eq!(parse_weighted_prompt("a (cat) on"), vec![seg("a ", 1.0), seg("cat", 1.1), seg(" on", 1.0)]);
        assert_eq!(parse_weighted_prompt("(cat:1.5) [dog]"), vec![seg("cat", 1.5), seg(" ", 1.0), seg("dog", 1.0 / 1.1)]);
        let nested = parse_weighted_prompt("((cat))");
        assert!((nested[0].weight - 1.21).abs() < 1e-6);
        assert_eq!(parse_weighted_prompt(r"\(literal\)"), vec![seg("(literal)", 1.0)]);
    }
}
