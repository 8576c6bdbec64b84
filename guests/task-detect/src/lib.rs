//! A task guest (`world task` in wit/tessera.wit): object detection over the host's engines.
//! It decodes the body with the preprocess guest's code (EXIF orientation applied), letterboxes
//! it to the model's square input, runs the model (`engines.run`), decodes the boxes of its
//! grid, suppresses overlaps and answers `detections`, boxes in the pixels of the image as sent.
//!
//! Parameters (query or `x-*` headers): `model` (default `shapes-detect`), `threshold` (the
//! lowest score kept, default 0.3), `iou` (the overlap above which a lower-scored box of the
//! same class is dropped, default 0.5), `max_detections` (default 100).
//!
//! The model's one output is a grid `[1, 5 + classes, G, G]` (models/tools/train_detect.py):
//! per cell an objectness logit, the log-distances (in cells) from the cell's centre to the
//! box's four edges, and the class logits.

/// The grid decoding and non-maximum suppression, apart from the component so that they are
/// unit-tested natively.
pub mod boxes {
    /// A box in some pixel space: `[x_min, y_min, x_max, y_max]`.
    pub type Bbox = [f32; 4];

    /// One object found: its score, class index and box.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Found {
        pub score: f32,
        pub class: usize,
        pub bbox: Bbox,
    }

    /// The highest log-distance decoded (e^6 cells): a bound on what an untrained or hostile
    /// model can make a box.
    const MAX_LOG_DISTANCE: f32 = 6.0;

    /// The boxes of a `[1, 5 + classes, grid, grid]` output whose score (sigmoid(objectness) ×
    /// the best class's softmax) reaches `threshold`, in the pixels of the model's square
    /// input (`stride` pixels per cell), unsorted and unsuppressed.
    pub fn decode(data: &[f32], classes: usize, grid: usize, stride: f32, threshold: f32) -> Vec<Found> {
        let cells = grid * grid;
        let at = |channel: usize, cell: usize| data[channel * cells + cell];
        let mut found = Vec::new();
        for cell in 0..cells {
            let objectness = 1.0 / (1.0 + (-at(0, cell)).exp());
            if objectness < threshold {
                continue; // the class's probability is at most 1
            }
            let (best, max) = (0..classes)
                .map(|k| (k, at(5 + k, cell)))
                .fold((0, f32::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
            let sum: f32 = (0..classes).map(|k| (at(5 + k, cell) - max).exp()).sum();
            let score = objectness / sum;
            if score.is_nan() || score < threshold {
                continue;
            }
            let (row, col) = (cell / grid, cell % grid);
            let (cx, cy) = ((col as f32 + 0.5) * stride, (row as f32 + 0.5) * stride);
            let d = |edge: usize| at(1 + edge, cell).min(MAX_LOG_DISTANCE).exp() * stride;
            found.push(Found { score, class: best, bbox: [cx - d(0), cy - d(1), cx + d(2), cy + d(3)] });
        }
        found
    }

    /// Intersection over union of two boxes (0 for empty ones).
    pub fn iou(a: &Bbox, b: &Bbox) -> f32 {
        let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
        let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
        let inter = w * h;
        let area = |r: &Bbox| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
        let union = area(a) + area(b) - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// Greedy per-class non-maximum suppression: best score first, a box is kept unless a kept
    /// box of its class overlaps it by more than `iou_threshold`; at most `max` kept.
    pub fn suppress(mut found: Vec<Found>, iou_threshold: f32, max: usize) -> Vec<Found> {
        found.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut kept: Vec<Found> = Vec::new();
        for f in found {
            if kept.len() == max {
                break;
            }
            if kept.iter().all(|k| k.class != f.class || iou(&k.bbox, &f.bbox) <= iou_threshold) {
                kept.push(f);
            }
        }
        kept
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A 2×2 grid, 2 classes: channel-major like the model's output.
        fn grid(cells: [[f32; 7]; 4]) -> Vec<f32> {
            (0..7).flat_map(|c| cells.iter().map(move |cell| cell[c])).collect()
        }

        #[test]
        fn decodes_a_cell_into_its_box_and_score() {
            let ln2 = 2f32.ln();
            // Cell (row 1, col 0): objectness 0 (sigmoid 0.5), class 1 certain, edges 1, 2, 1, 2 cells.
            let mut cells = [[-20.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]; 4];
            cells[2] = [0.0, 0.0, ln2, 0.0, ln2, -30.0, 30.0];
            let found = decode(&grid(cells), 2, 2, 10.0, 0.3);
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].class, 1);
            assert!((found[0].score - 0.5).abs() < 1e-4);
            // Centre (5, 15); left 10, top 20, right 10, bottom 20.
            let b = found[0].bbox;
            for (got, want) in b.iter().zip([-5.0, -5.0, 15.0, 35.0]) {
                assert!((got - want).abs() < 1e-3, "{b:?}");
            }
        }

        #[test]
        fn a_nan_or_huge_output_gives_no_box_or_a_bounded_one() {
            let mut cells = [[f32::NAN; 7]; 4];
            cells[0] = [30.0, 1e9, 1e9, 1e9, 1e9, 5.0, 0.0];
            let found = decode(&grid(cells), 2, 2, 10.0, 0.3);
            assert_eq!(found.len(), 1);
            assert!(found[0].bbox.iter().all(|v| v.is_finite()));
        }

        #[test]
        fn suppression_keeps_the_best_of_overlapping_boxes_per_class() {
            let f = |score, class, x: f32| Found { score, class, bbox: [x, 0.0, x + 10.0, 10.0] };
            let kept = suppress(vec![f(0.6, 0, 1.0), f(0.9, 0, 0.0), f(0.8, 1, 0.0), f(0.7, 0, 20.0)], 0.5, 10);
            assert_eq!(kept, vec![f(0.9, 0, 0.0), f(0.8, 1, 0.0), f(0.7, 0, 20.0)]);
            assert_eq!(suppress(kept, 0.5, 2).len(), 2);
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "task",
        path: "../../wit",
    });

    use crate::boxes;
    use tessera::vision::engines;
    use tessera::vision::tasks::{Bbox, Detection};
    use tessera::vision::types::Tensor;

    struct Detect;

    /// The most pixels, and the most bytes a decoder may allocate, this task decodes (the host
    /// caps the guest's memory whatever these say).
    const LIMITS: tessera_preprocess::Limits =
        tessera_preprocess::Limits { max_pixels: 40_000_000, max_alloc_bytes: 192 << 20 };

    /// The letterbox's grey, YOLO's (and train_detect.py's).
    const FILL: u8 = 114;

    fn param<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
        req.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Parameter `key` as a number in `range`, or `default` when absent.
    fn number<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Debug>(
        req: &Request,
        key: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, Error> {
        let Some(v) = param(req, key) else { return Ok(default) };
        v.parse::<T>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{key} must be a number from {:?} to {:?}, got {v:?}",
                range.start(),
                range.end()
            ))
        })
    }

    fn image_error(e: tessera_preprocess::Error) -> Error {
        match e {
            tessera_preprocess::Error::InvalidInput(m) => Error::InvalidInput(m),
            tessera_preprocess::Error::Unsupported(m) => Error::Unsupported(m),
            tessera_preprocess::Error::TooLarge(m) => Error::TooLarge(m),
            tessera_preprocess::Error::Internal(m) => Error::Internal(m),
        }
    }

    impl Guest for Detect {
        fn run(req: Request) -> Result<Answer, Error> {
            let model = param(&req, "model").unwrap_or("shapes-detect");
            let threshold = number(&req, "threshold", 0.3f32, 0.0..=1.0)?;
            let iou = number(&req, "iou", 0.5f32, 0.0..=1.0)?;
            let max = number(&req, "max_detections", 100usize, 1..=10_000)?;
            let info = engines::describe(model, None)?;
            let spec = &info.spec;
            let nchw = |v: &[f32]| <[f32; 3]>::try_from(v).ok();
            let (Some(&height), Some(&width), Some(mean), Some(std)) =
                (spec.input_shape.get(2), spec.input_shape.get(3), nchw(&spec.mean), nchw(&spec.std))
            else {
                return Err(Error::Internal(format!("model {model} takes {:?}, not an NCHW image", spec.input_shape)));
            };
            if height != width || spec.input_shape.len() != 4 {
                return Err(Error::Internal(format!("model {model} takes {:?}, not a square image", spec.input_shape)));
            }
            let mut fitted =
                tessera_preprocess::fit(&req.body, &LIMITS, width, FILL, mean, std).map_err(image_error)?;
            let data = std::mem::take(&mut fitted.data);
            let outputs = engines::run(model, None, &Tensor { shape: spec.input_shape.clone(), data })?;
            let out = &outputs.first().ok_or_else(|| Error::Internal(format!("model {model} gave no output")))?.tensor;
            let classes = info.labels.len();
            let [1, channels, grid, grid_w] = out.shape[..] else {
                return Err(Error::Internal(format!("model {model} answered {:?}, not [1, C, G, G]", out.shape)));
            };
            if channels as usize != 5 + classes || grid != grid_w || grid == 0 || width % grid != 0 {
                return Err(Error::Internal(format!(
                    "model {model} answered {:?}: not a [1, 5 + {classes} labels, G, G] grid over its {width}x{width} input",
                    out.shape
                )));
            }
            let stride = (width / grid) as f32;
            let found = boxes::decode(&out.data, classes, grid as usize, stride, threshold);
            let detections = boxes::suppress(found, iou, max)
                .into_iter()
                .map(|f| {
                    let [x_min, y_min, x_max, y_max] = fitted.to_sent(f.bbox);
                    Detection {
                        label: info.labels[f.class].clone(),
                        score: f.score,
                        bbox: Bbox { x_min, y_min, x_max, y_max },
                    }
                })
                .collect();
            Ok(Answer::Detections(detections))
        }
    }

    export!(Detect);
}
