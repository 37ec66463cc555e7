//! Spreadsheets: XLSX/ODS → CSV (`calamine`, the first sheet) and CSV → XLSX
//! (`rust_xlsxwriter`). A CSV field becomes a number cell only when the number prints back as
//! the same text (so `007` and `1e3` stay text and nothing is lost on the way back).

use std::io::Cursor;

use calamine::{Data, Reader};
use rust_xlsxwriter::Workbook;

use super::{Conversion, ConvertError};
use crate::job::format::Format;

/// Excel's own limits.
const XLSX_ROWS_MAX: u32 = 1_048_576;
const XLSX_COLUMNS_MAX: u16 = 16_384;

pub fn csv_to_xlsx(conversion: &Conversion<'_>) -> Result<Vec<u8>, ConvertError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(conversion.input);
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet();
    (conversion.progress)(20, "reading rows");
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|error| conversion.corrupt(error))?;
        let row = u32::try_from(index)
            .ok()
            .filter(|row| *row < XLSX_ROWS_MAX)
            .ok_or_else(|| ConvertError::TooLarge(format!("more than {XLSX_ROWS_MAX} rows")))?;
        for (column, value) in record.iter().enumerate() {
            let column = u16::try_from(column)
                .ok()
                .filter(|column| *column < XLSX_COLUMNS_MAX)
                .ok_or_else(|| {
                    ConvertError::TooLarge(format!("more than {XLSX_COLUMNS_MAX} columns"))
                })?;
            let value = if index == 0 {
                value.trim_start_matches('\u{feff}')
            } else {
                value
            };
            let written = match exact_number(value) {
                Some(number) => sheet.write_number(row, column, number).map(drop),
                None => sheet.write_string(row, column, value).map(drop),
            };
            written.map_err(|error| ConvertError::Failed(error.to_string()))?;
        }
        if index % 10_000 == 0 {
            conversion.checkpoint()?;
        }
    }
    (conversion.progress)(60, "writing xlsx");
    workbook
        .save_to_buffer()
        .map_err(|error| ConvertError::Failed(format!("cannot write the workbook: {error}")))
}

/// `value` as a number if it prints back exactly as written.
fn exact_number(value: &str) -> Option<f64> {
    let number: f64 = value.parse().ok()?;
    (number.is_finite() && number.to_string() == value).then_some(number)
}

pub fn sheet_to_csv(conversion: &Conversion<'_>) -> Result<Vec<u8>, ConvertError> {
    (conversion.progress)(20, "reading the workbook");
    // The format is known (sniffed): open it as that, so a damaged file gets its own reader's
    // error rather than "cannot detect file format" from trying every reader.
    let input = Cursor::new(conversion.input);
    let range = match conversion.from {
        Format::Ods => first_sheet(
            calamine::open_workbook_from_rs::<calamine::Ods<_>, _>(input),
            conversion,
        )?,
        _ => first_sheet(
            calamine::open_workbook_from_rs::<calamine::Xlsx<_>, _>(input),
            conversion,
        )?,
    };
    conversion.checkpoint()?;
    (conversion.progress)(60, "writing csv");
    let mut writer = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(Vec::new());
    for (index, row) in range.rows().enumerate() {
        writer
            .write_record(row.iter().map(cell))
            .map_err(|error| ConvertError::Failed(error.to_string()))?;
        if writer.get_ref().len() as u64 > conversion.output_bytes_max {
            return Err(ConvertError::TooLarge(format!(
                "the output would be larger than {} bytes",
                conversion.output_bytes_max
            )));
        }
        if index % 10_000 == 0 {
            conversion.checkpoint()?;
        }
    }
    writer
        .into_inner()
        .map_err(|error| ConvertError::Failed(error.to_string()))
}

/// The first sheet of a workbook that opened (or the reason it did not).
fn first_sheet<'a, R, E>(
    workbook: Result<R, E>,
    conversion: &Conversion<'a>,
) -> Result<calamine::Range<Data>, ConvertError>
where
    R: Reader<Cursor<&'a [u8]>>,
    E: std::fmt::Display,
    R::Error: std::fmt::Display,
{
    let mut workbook = workbook.map_err(|error| conversion.corrupt(error))?;
    workbook
        .worksheet_range_at(0)
        .ok_or_else(|| conversion.corrupt("the workbook has no sheet"))?
        .map_err(|error| conversion.corrupt(error))
}

fn cell(data: &Data) -> String {
    match data {
        Data::Empty => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::exact_number;

    #[test]
    fn only_numbers_that_print_back_the_same_become_numbers() {
        assert_eq!(exact_number("42"), Some(42.0));
        assert_eq!(exact_number("-3.5"), Some(-3.5));
        assert_eq!(exact_number("007"), None);
        assert_eq!(exact_number("1e3"), None);
        assert_eq!(exact_number("NaN"), None);
        assert_eq!(exact_number("abc"), None);
    }
}
