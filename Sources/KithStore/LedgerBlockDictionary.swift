extension LedgerBlock {
    /// The preset dictionary ledger blocks are deflated with (`compressedTag`): words a block
    /// of a kilobyte is likely to hold but too short to repeat within itself. It is the
    /// vocabulary of Segment's specs (its e-commerce, lifecycle and mobile event names, their
    /// property names as compact JSON writes them) and Kith's touchpoint channels — not words
    /// taken from the bench workload. zlib counts strings near the end as the nearest, so the
    /// most common come last. The bytes are part of the stored format: a different dictionary
    /// needs a new tag, and blocks under the old tag keep this one.
    package static let dictionary: [UInt8] = {
        let eventNames = [
            "Video Content Playing", "Video Playback Started", "Push Notification Tapped", "Push Notification Received",
            "Email Link Clicked", "Email Opened", "Subscription Cancelled", "Subscription Started", "Trial Started",
            "Account Created", "Signed Out", "Signed In", "Signed Up", "Application Backgrounded", "Application Updated",
            "Application Opened", "Application Installed", "Wishlist Product Added to Cart", "Product Added to Wishlist",
            "Coupon Removed", "Coupon Denied", "Coupon Applied", "Coupon Entered", "Promotion Clicked", "Promotion Viewed",
            "Cart Shared", "Product Shared", "Product Reviewed", "Product List Filtered", "Product List Viewed",
            "Products Searched", "Cart Viewed", "Payment Info Entered", "Checkout Step Completed", "Checkout Step Viewed",
            "Order Cancelled", "Order Refunded", "Order Updated", "Product Removed", "Product Clicked", "Screen Viewed",
            "Page Viewed", "Checkout Started", "Product Added", "Product Viewed", "Order Completed",
        ]
        let propertyNames = [
            "image_url", "affiliation", "list_id", "cart_id", "checkout_id", "position", "query", "search", "title",
            "referrer", "path", "url", "subtotal", "total", "tax", "shipping", "discount", "coupon", "variant", "brand",
            "value", "category", "quantity", "price", "name", "productId", "product_id", "sku", "orderId", "order_id",
            "currency", "revenue",
        ]
        let channels = ["app", "email", "server", "kiosk", "loyalty", "call-centre", "pos", "mobile", "web"]
        var text = eventNames.joined()
        text += propertyNames.map { "\"\($0)\":" }.joined()
        text += "\"EUR\"\"GBP\"\"USD\""
        text += channels.map { "\"\($0)\"" }.joined()
        return Array(text.utf8)
    }()
}
