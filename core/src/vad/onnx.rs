//! Just enough of the ONNX file format to read a model's float weights by name: the protobuf wire
//! format walked by hand (ModelProto → GraphProto → TensorProto), no generated code and no ONNX
//! runtime. The network itself is written out in `silero.rs`.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("malformed ONNX file: {0}")]
    Malformed(&'static str),
    #[error("ONNX tensor `{name}`: {why}")]
    Tensor { name: String, why: String },
}

/// A float32 tensor read from the file.
#[derive(Debug, Clone)]
pub struct FloatTensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, OnnxError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(OnnxError::Malformed("varint runs past the end"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(OnnxError::Malformed("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], OnnxError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(OnnxError::Malformed("field runs past the end"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next (field number, value), or None at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, OnnxError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?)
                    .map_err(|_| OnnxError::Malformed("length too large"))?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed
            }
            _ => return Err(OnnxError::Malformed("unsupported wire type")),
        };
        Ok(Some((key >> 3, field)))
    }
}

// Field numbers from onnx.proto.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_DIMS: u64 = 1;
const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_FLOAT_DATA: u64 = 4;
const TENSOR_NAME: u64 = 8;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_DATA_LOCATION: u64 = 14;
const DATA_TYPE_FLOAT: u64 = 1;

/// Every float32 initializer of the model's main graph, by name. Initializers of other types
/// (the int64 shape constants of a graph) are skipped.
pub fn float_initializers(bytes: &[u8]) -> Result<HashMap<String, FloatTensor>, OnnxError> {
    let mut graph = None;
    let mut r = Reader::new(bytes);
    while let Some((num, f)) = r.next()? {
        if let (MODEL_GRAPH, Field::Bytes(b)) = (num, f) {
            graph = Some(b);
        }
    }
    let graph = graph.ok_or(OnnxError::Malformed("no graph"))?;
    let mut out = HashMap::new();
    let mut r = Reader::new(graph);
    while let Some((num, f)) = r.next()? {
        if let (GRAPH_INITIALIZER, Field::Bytes(b)) = (num, f) {
            if let Some((name, t)) = tensor(b)? {
                out.insert(name, t);
            }
        }
    }
    Ok(out)
}

fn tensor(bytes: &[u8]) -> Result<Option<(String, FloatTensor)>, OnnxError> {
    let mut dims = Vec::new();
    let mut data_type = 0;
    let mut name = String::new();
    let mut raw: Option<&[u8]> = None;
    let mut floats: Vec<f32> = Vec::new();
    let mut external = false;
    let mut r = Reader::new(bytes);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (TENSOR_DIMS, Field::Varint(d)) => dims.push(d),
            (TENSOR_DIMS, Field::Bytes(packed)) => {
                let mut p = Reader::new(packed);
                while p.pos < packed.len() {
                    dims.push(p.varint()?);
                }
            }
            (TENSOR_DATA_TYPE, Field::Varint(t)) => data_type = t,
            (TENSOR_NAME, Field::Bytes(b)) => name = String::from_utf8_lossy(b).into_owned(),
            (TENSOR_RAW_DATA, Field::Bytes(b)) => raw = Some(b),
            (TENSOR_FLOAT_DATA, Field::Bytes(b)) => floats.extend(le_floats(b)),
            (TENSOR_DATA_LOCATION, Field::Varint(1)) => external = true,
            _ => {}
        }
    }
    if data_type != DATA_TYPE_FLOAT {
        return Ok(None);
    }
    let bad = |why: String| OnnxError::Tensor {
        name: name.clone(),
        why,
    };
    if external {
        return Err(bad(
            "stored in an external file, which is not supported".into()
        ));
    }
    let dims: Vec<usize> = dims
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} too large"))))
        .collect::<Result<_, _>>()?;
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("element count overflows".into()))?;
    let data = match raw {
        Some(b) => {
            if b.len() != n * 4 {
                return Err(bad(format!("{} bytes of data for {n} floats", b.len())));
            }
            le_floats(b).collect()
        }
        None => floats,
    };
    if data.len() != n {
        return Err(bad(format!("{} values for shape {dims:?}", data.len())));
    }
    Ok(Some((name, FloatTensor { dims, data })))
}

fn le_floats(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn field_bytes(num: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn field_varint(num: u64, v: u64, out: &mut Vec<u8>) {
        varint(num << 3, out);
        varint(v, out);
    }

    fn model(tensor: &[u8]) -> Vec<u8> {
        let mut graph = Vec::new();
        field_bytes(GRAPH_INITIALIZER, tensor, &mut graph);
        let mut m = Vec::new();
        field_varint(1, 8, &mut m); // ir_version, skipped
        field_bytes(MODEL_GRAPH, &graph, &mut m);
        m
    }

    #[test]
    fn reads_a_float_initializer() {
        let mut t = Vec::new();
        field_varint(TENSOR_DIMS, 2, &mut t);
        field_varint(TENSOR_DIMS, 1, &mut t);
        field_varint(TENSOR_DATA_TYPE, DATA_TYPE_FLOAT, &mut t);
        field_bytes(TENSOR_NAME, b"w", &mut t);
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        field_bytes(TENSOR_RAW_DATA, &raw, &mut t);
        let got = float_initializers(&model(&t)).unwrap();
        assert_eq!(got["w"].dims, vec![2, 1]);
        assert_eq!(got["w"].data, vec![1.5, -2.0]);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut t = Vec::new();
        field_varint(TENSOR_DIMS, 3, &mut t);
        field_varint(TENSOR_DATA_TYPE, DATA_TYPE_FLOAT, &mut t);
        field_bytes(TENSOR_RAW_DATA, &[0u8; 8], &mut t);
        assert!(
            float_initializers(&model(&t)).is_err(),
            "shape/data mismatch"
        );
        let m = model(&t);
        for cut in 0..m.len() {
            let _ = float_initializers(&m[..cut]);
        }
        assert!(float_initializers(&[0xff; 12]).is_err());
        assert!(float_initializers(b"not an onnx file at all").is_err());
    }
}
