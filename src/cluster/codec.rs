//! How Workbench's plans travel to the cluster: Ballista's own codecs
//! (file formats, shuffles, its execution nodes) for everything, plus the
//! functions that carry state of their own. A masking function is more
//! than its name: `hash` carries the lake's key, `partial(n)` how many
//! characters it shows; both are encoded with it, so the executors mask
//! exactly as the server would. Every other function travels by name and
//! is found in the executors' registry ([`super::shared_functions`]).

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{TableReference, exec_err};
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use workbench_udfs::mask::{KeyedHash, Partial};

const HASH: u8 = b'h';
const PARTIAL: u8 = b'p';

/// The bytes a masking function travels with; empty for any other function.
fn encode_udf(udf: &ScalarUDF, buf: &mut Vec<u8>) {
    let inner = udf.inner();
    if let Some(hash) = inner.downcast_ref::<KeyedHash>() {
        buf.push(HASH);
        buf.extend_from_slice(hash.key());
    } else if let Some(partial) = inner.downcast_ref::<Partial>() {
        buf.push(PARTIAL);
        buf.extend_from_slice(&(partial.shown() as u64).to_le_bytes());
    }
}

fn decode_udf(name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
    match buf.split_first() {
        Some((&HASH, key)) => Ok(Arc::new(ScalarUDF::new_from_impl(KeyedHash::new(key.to_vec())))),
        Some((&PARTIAL, shown)) => {
            let shown: [u8; 8] = match shown.try_into() {
                Ok(bytes) => bytes,
                Err(_) => return exec_err!("the cluster received a malformed {name}: expected 8 bytes"),
            };
            Ok(Arc::new(ScalarUDF::new_from_impl(Partial::new(u64::from_le_bytes(shown) as usize))))
        }
        _ => exec_err!(
            "function {name} is not known to this Ballista node; the scheduler and executors must be \
             `workbench scheduler` / `workbench executor` of the same Workbench version as the server"
        ),
    }
}

/// The logical codec the server and the scheduler share.
#[derive(Debug, Default)]
pub struct LogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> Result<Extension> {
        self.ballista.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        self.ballista.try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.ballista.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> Result<Arc<dyn FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn FileFormatFactory>) -> Result<()> {
        self.ballista.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        encode_udf(node, buf);
        Ok(())
    }
}

/// The physical codec the scheduler and the executors share.
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.ballista.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        self.ballista.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        encode_udf(node, buf);
        Ok(())
    }
}
