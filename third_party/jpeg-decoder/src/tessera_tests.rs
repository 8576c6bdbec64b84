//! Tessera's patch (see TESSERA.md) must decode exactly as upstream did. `reference_decode_block`
//! is upstream 0.3.2's `decode_block`, verbatim; both run block after block over the same random
//! entropy-coded streams (byte-stuffed, some ending in a marker) with the MJPEG default tables,
//! whose 16-bit codes and unused patterns reach every path: the lookup tables, end of block, runs
//! of sixteen zeros, long codes, invalid codes and the zero fill after a marker. After every block
//! the coefficients, the predictors, the end-of-band run, the bit buffer, the marker and the
//! reader's position must agree, and so must any error.

use super::*;
use crate::huffman::{fill_default_mjpeg_tables, HuffmanDecoder, HuffmanTable};
use crate::parser::{Predictor, ScanInfo};

#[allow(clippy::too_many_arguments)]
fn reference_decode_block<R: Read>(
    reader: &mut R,
    coefficients: &mut [i16; 64],
    huffman: &mut HuffmanDecoder,
    dc_table: Option<&HuffmanTable>,
    ac_table: Option<&HuffmanTable>,
    spectral_selection: Range<u8>,
    successive_approximation_low: u8,
    eob_run: &mut u16,
    dc_predictor: &mut i16,
) -> Result<()> {
    debug_assert_eq!(coefficients.len(), 64);

    if spectral_selection.start == 0 {
        // Section F.2.2.1
        // Figure F.12
        let value = huffman.decode(reader, dc_table.unwrap())?;
        let diff = match value {
            0 => 0,
            1..=11 => huffman.receive_extend(reader, value)?,
            _ => {
                // Section F.1.2.1.1
                // Table F.1
                return Err(Error::Format(
                    "invalid DC difference magnitude category".to_owned(),
                ));
            }
        };

        // Malicious JPEG files can cause this add to overflow, therefore we use wrapping_add.
        // One example of such a file is tests/crashtest/images/dc-predictor-overflow.jpg
        *dc_predictor = dc_predictor.wrapping_add(diff);
        coefficients[0] = *dc_predictor << successive_approximation_low;
    }

    let mut index = cmp::max(spectral_selection.start, 1);

    if index < spectral_selection.end && *eob_run > 0 {
        *eob_run -= 1;
        return Ok(());
    }

    // Section F.1.2.2.1
    while index < spectral_selection.end {
        if let Some((value, run)) = huffman.decode_fast_ac(reader, ac_table.unwrap())? {
            index += run;

            if index >= spectral_selection.end {
                break;
            }

            coefficients[UNZIGZAG[index as usize] as usize] = value << successive_approximation_low;
            index += 1;
        } else {
            let byte = huffman.decode(reader, ac_table.unwrap())?;
            let r = byte >> 4;
            let s = byte & 0x0f;

            if s == 0 {
                match r {
                    15 => index += 16, // Run length of 16 zero coefficients.
                    _ => {
                        *eob_run = (1 << r) - 1;

                        if r > 0 {
                            *eob_run += huffman.get_bits(reader, r)?;
                        }

                        break;
                    }
                }
            } else {
                index += r;

                if index >= spectral_selection.end {
                    break;
                }

                coefficients[UNZIGZAG[index as usize] as usize] =
                    huffman.receive_extend(reader, s)? << successive_approximation_low;
                index += 1;
            }
        }
    }

    Ok(())
}

/// `len` random entropy-coded bytes, 0xFF stuffed, optionally followed by a marker (EOI).
/// `zero_bias` in 0..=3 makes zero bits likelier (short codes, end of block) as it grows.
fn stream(seed: u64, len: usize, zero_bias: u32, marker: bool) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(len + len / 64 + 2);
    for _ in 0..len {
        let mut byte = next() as u8;
        for _ in 0..zero_bias {
            byte &= next() as u8;
        }
        out.push(byte);
        if byte == 0xFF {
            out.push(0x00);
        }
    }
    if marker {
        out.extend_from_slice(&[0xFF, 0xD9]);
    }
    out
}

/// The next 64 bits the decoder would hand out, and the marker it would then have seen.
fn upcoming(huffman: &HuffmanDecoder, mut reader: &[u8]) -> String {
    let mut huffman = huffman.clone();
    let bits: Vec<_> = (0..8).map(|_| huffman.get_bits(&mut reader, 8).map_err(|e| e.to_string())).collect();
    format!("{bits:?} {:?}", huffman.take_marker(&mut reader).map_err(|e| e.to_string()))
}

fn tables() -> (HuffmanTable, HuffmanTable) {
    let scan = ScanInfo {
        component_indices: vec![0],
        dc_table_indices: vec![0],
        ac_table_indices: vec![0],
        spectral_selection: 0..64,
        predictor_selection: Predictor::NoPrediction,
        successive_approximation_high: 0,
        successive_approximation_low: 0,
        point_transform: 0,
    };
    let (mut dc, mut ac) = (vec![None, None, None, None], vec![None, None, None, None]);
    fill_default_mjpeg_tables(&scan, &mut dc, &mut ac);
    (dc[0].take().unwrap(), ac[0].take().unwrap())
}

#[test]
fn the_patched_block_decoder_matches_upstreams() {
    let (dc, ac) = tables();
    // (spectral selection, successive approximation low): baseline, a progressive DC scan,
    // progressive first AC scans (with end-of-band runs) and a shifted one.
    let scans = [(0..64, 0), (0..64, 1), (0..1, 0), (1..64, 0), (1..6, 0), (6..64, 2)];
    let (mut blocks, mut early_eof) = (0, 0);
    for seed in 0..48u64 {
        for (spectral, low) in scans.clone() {
            let marker = seed % 3 == 0;
            let data = stream(seed, 4096, (seed % 4) as u32, marker);
            let (mut ours, mut theirs) = (&data[..], &data[..]);
            let (mut h_ours, mut h_theirs) = (HuffmanDecoder::new(), HuffmanDecoder::new());
            let (mut c_ours, mut c_theirs) = ([0i16; 64], [0i16; 64]);
            let (mut eob_ours, mut eob_theirs) = (0u16, 0u16);
            let (mut dc_ours, mut dc_theirs) = (0i16, 0i16);
            let dc_table = (spectral.start == 0).then_some(&dc);
            let ac_table = (spectral.end > 1).then_some(&ac);
            for block in 0..2000 {
                let r_ours = decode_block(
                    &mut ours, &mut c_ours, &mut h_ours, dc_table, ac_table, spectral.clone(), low,
                    &mut eob_ours, &mut dc_ours,
                );
                let r_theirs = reference_decode_block(
                    &mut theirs, &mut c_theirs, &mut h_theirs, dc_table, ac_table, spectral.clone(), low,
                    &mut eob_theirs, &mut dc_theirs,
                );
                let at = format!("seed {seed}, scan {spectral:?}/{low}, block {block}");
                if !marker && r_ours.is_err() != r_theirs.is_err() {
                    // No marker ends this stream: the two refill at different times, so one
                    // meets the end of the data a few blocks before the other; the error must
                    // be the same (a real scan is always followed by a marker: without one both
                    // fail).
                    let (mut r_ours, mut r_theirs) = (r_ours, r_theirs);
                    for _ in 0..64 {
                        if r_ours.is_ok() {
                            r_ours = decode_block(
                                &mut ours, &mut c_ours, &mut h_ours, dc_table, ac_table, spectral.clone(), low,
                                &mut eob_ours, &mut dc_ours,
                            );
                        }
                        if r_theirs.is_ok() {
                            r_theirs = reference_decode_block(
                                &mut theirs, &mut c_theirs, &mut h_theirs, dc_table, ac_table, spectral.clone(),
                                low, &mut eob_theirs, &mut dc_theirs,
                            );
                        }
                    }
                    assert_eq!(format!("{r_ours:?}"), format!("{r_theirs:?}"), "{at}");
                    early_eof += 1;
                    break;
                }
                assert_eq!(format!("{r_ours:?}"), format!("{r_theirs:?}"), "{at}");
                if r_ours.is_err() {
                    break;
                }
                assert_eq!(c_ours, c_theirs, "{at}");
                assert_eq!((eob_ours, dc_ours), (eob_theirs, dc_theirs), "{at}");
                // The two refill at different times, so the buffers differ; the bits still to
                // come (and where a marker stops them) must not. Near the end of an unterminated
                // stream only the timing of the error differs (above), so look from further off.
                if marker || theirs.len() >= 16 {
                    assert_eq!(upcoming(&h_ours, ours), upcoming(&h_theirs, theirs), "{at}");
                }
                blocks += 1;
                if block % 8 == 7 {
                    // A new component's block, as decode_scan hands out, zeroed.
                    c_ours = [0; 64];
                    c_theirs = [0; 64];
                }
            }
        }
    }
    // The streams must exercise the loop, not stop at the first block.
    assert!(blocks > 100_000, "only {blocks} blocks compared");
    eprintln!("{blocks} blocks compared; {early_eof} unterminated streams met their end a few blocks apart");
}
