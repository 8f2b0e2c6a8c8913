//! One page of a list, as the admin API pages accounts and audit events.

pub const DEFAULT_PER_PAGE: u64 = 50;
pub const MAX_PER_PAGE: u64 = 200;
const MAX_PAGE: u64 = 1_000_000;

/// `page` from 1.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub page: u64,
    pub per_page: u64,
}

impl PageRequest {
    /// Defaults: the first page, [`DEFAULT_PER_PAGE`] items. The error is a message for the caller.
    pub fn parse(page: Option<u64>, per_page: Option<u64>) -> Result<Self, String> {
        let page = page.unwrap_or(1);
        let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE);
        if !(1..=MAX_PAGE).contains(&page) {
            return Err("page must be between 1 and 1000000".into());
        }
        if !(1..=MAX_PER_PAGE).contains(&per_page) {
            return Err(format!("per_page must be between 1 and {MAX_PER_PAGE}"));
        }
        Ok(Self { page, per_page })
    }

    /// Rows to skip before this page.
    pub fn offset(&self) -> u64 {
        (self.page - 1) * self.per_page
    }
}
