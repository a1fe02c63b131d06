//! The REST routes the fake server knows: parsing `METHOD /api/v10/...` into a [`Route`],
//! and for each route its template (for statistics and the bucket name), its major
//! parameter and the rate limit it falls under.

use crate::config::Knobs;
use crate::error::ApiError;
use hyper::Method;
use std::time::Duration;

/// A REST route with its path parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /users/@me`
    CurrentUser,
    /// `GET /users/{user}`
    GetUser(u64),
    /// `GET /guilds/{guild}`
    GetGuild(u64),
    /// `GET /guilds/{guild}/roles`
    GetRoles(u64),
    /// `GET /guilds/{guild}/members`
    ListMembers(u64),
    /// `GET /guilds/{guild}/members/{user}`
    GetMember(u64, u64),
    /// `GET /guilds/{guild}/channels`
    GetChannels(u64),
    /// `POST /guilds/{guild}/channels`
    CreateChannel(u64),
    /// `GET /channels/{channel}`
    GetChannel(u64),
    /// `PATCH /channels/{channel}`
    UpdateChannel(u64),
    /// `DELETE /channels/{channel}`
    DeleteChannel(u64),
    /// `POST /channels/{channel}/messages`
    CreateMessage(u64),
    /// `GET /channels/{channel}/messages`
    GetMessages(u64),
    /// `GET /channels/{channel}/messages/{message}`
    GetMessage(u64, u64),
    /// `DELETE /channels/{channel}/messages/{message}`
    DeleteMessage(u64, u64),
    /// `POST /channels/{channel}/messages/bulk-delete`
    BulkDelete(u64),
    /// `GET /channels/{channel}/pins` (the older pins API: an array of messages)
    GetPinsLegacy(u64),
    /// `PUT /channels/{channel}/pins/{message}`
    PinLegacy(u64, u64),
    /// `DELETE /channels/{channel}/pins/{message}`
    UnpinLegacy(u64, u64),
    /// `GET /channels/{channel}/messages/pins` (`{"items": [...], "has_more": ...}`)
    GetPins(u64),
    /// `PUT /channels/{channel}/messages/pins/{message}`
    Pin(u64, u64),
    /// `DELETE /channels/{channel}/messages/pins/{message}`
    Unpin(u64, u64),
    /// `POST /attachments/refresh-urls`
    RefreshUrls,
}

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

impl Route {
    /// Parses a method and a path relative to `/api/v10/`: 404 for an unknown path, 405 for
    /// a known path with another method, 400 for an id that is not a snowflake.
    pub fn parse(method: &Method, path: &str) -> Result<Route, ApiError> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if let Some(route) = match_route(method, &segments) {
            return route;
        }
        if METHODS
            .iter()
            .any(|other| match_route(other, &segments).is_some())
        {
            return Err(ApiError::method_not_allowed());
        }
        Err(ApiError::not_found())
    }

    /// `METHOD /path/{param}` as Discord's docs name it.
    pub fn template(&self) -> &'static str {
        match self {
            Route::CurrentUser => "GET /users/@me",
            Route::GetUser(_) => "GET /users/{user.id}",
            Route::GetGuild(_) => "GET /guilds/{guild.id}",
            Route::GetRoles(_) => "GET /guilds/{guild.id}/roles",
            Route::ListMembers(_) => "GET /guilds/{guild.id}/members",
            Route::GetMember(..) => "GET /guilds/{guild.id}/members/{user.id}",
            Route::GetChannels(_) => "GET /guilds/{guild.id}/channels",
            Route::CreateChannel(_) => "POST /guilds/{guild.id}/channels",
            Route::GetChannel(_) => "GET /channels/{channel.id}",
            Route::UpdateChannel(_) => "PATCH /channels/{channel.id}",
            Route::DeleteChannel(_) => "DELETE /channels/{channel.id}",
            Route::CreateMessage(_) => "POST /channels/{channel.id}/messages",
            Route::GetMessages(_) => "GET /channels/{channel.id}/messages",
            Route::GetMessage(..) => "GET /channels/{channel.id}/messages/{message.id}",
            Route::DeleteMessage(..) => "DELETE /channels/{channel.id}/messages/{message.id}",
            Route::BulkDelete(_) => "POST /channels/{channel.id}/messages/bulk-delete",
            Route::GetPinsLegacy(_) => "GET /channels/{channel.id}/pins",
            Route::PinLegacy(..) => "PUT /channels/{channel.id}/pins/{message.id}",
            Route::UnpinLegacy(..) => "DELETE /channels/{channel.id}/pins/{message.id}",
            Route::GetPins(_) => "GET /channels/{channel.id}/messages/pins",
            Route::Pin(..) => "PUT /channels/{channel.id}/messages/pins/{message.id}",
            Route::Unpin(..) => "DELETE /channels/{channel.id}/messages/pins/{message.id}",
            Route::RefreshUrls => "POST /attachments/refresh-urls",
        }
    }

    /// The top-level resource buckets are counted per: the channel or guild id, else 0.
    pub fn major(&self) -> u64 {
        match *self {
            Route::CurrentUser | Route::GetUser(_) | Route::RefreshUrls => 0,
            Route::GetGuild(g)
            | Route::GetRoles(g)
            | Route::ListMembers(g)
            | Route::GetMember(g, _)
            | Route::GetChannels(g)
            | Route::CreateChannel(g) => g,
            Route::GetChannel(c)
            | Route::UpdateChannel(c)
            | Route::DeleteChannel(c)
            | Route::CreateMessage(c)
            | Route::GetMessages(c)
            | Route::GetMessage(c, _)
            | Route::DeleteMessage(c, _)
            | Route::BulkDelete(c)
            | Route::GetPinsLegacy(c)
            | Route::PinLegacy(c, _)
            | Route::UnpinLegacy(c, _)
            | Route::GetPins(c)
            | Route::Pin(c, _)
            | Route::Unpin(c, _) => c,
        }
    }

    /// The (count, window) of this route's bucket.
    pub fn limit(&self, knobs: &Knobs) -> (u32, Duration) {
        match self {
            Route::CreateMessage(_) => knobs.message_create_limit,
            Route::DeleteMessage(..) => knobs.message_delete_limit,
            _ => knobs.default_route_limit,
        }
    }
}

/// The route for this method and path, `None` if no route has this shape.
fn match_route(method: &Method, segments: &[&str]) -> Option<Result<Route, ApiError>> {
    let route = match (method.as_str(), segments) {
        ("GET", ["users", "@me"]) => Ok(Route::CurrentUser),
        ("GET", ["users", user]) => id(user).map(Route::GetUser),
        ("GET", ["guilds", guild]) => id(guild).map(Route::GetGuild),
        ("GET", ["guilds", guild, "roles"]) => id(guild).map(Route::GetRoles),
        ("GET", ["guilds", guild, "members"]) => id(guild).map(Route::ListMembers),
        ("GET", ["guilds", guild, "members", user]) => ids(guild, user, Route::GetMember),
        ("GET", ["guilds", guild, "channels"]) => id(guild).map(Route::GetChannels),
        ("POST", ["guilds", guild, "channels"]) => id(guild).map(Route::CreateChannel),
        ("GET", ["channels", channel]) => id(channel).map(Route::GetChannel),
        ("PATCH", ["channels", channel]) => id(channel).map(Route::UpdateChannel),
        ("DELETE", ["channels", channel]) => id(channel).map(Route::DeleteChannel),
        ("POST", ["channels", channel, "messages"]) => id(channel).map(Route::CreateMessage),
        ("GET", ["channels", channel, "messages"]) => id(channel).map(Route::GetMessages),
        (
            "POST",
            [
                "channels",
                channel,
                "messages",
                "bulk-delete" | "bulk_delete",
            ],
        ) => id(channel).map(Route::BulkDelete),
        ("GET", ["channels", channel, "messages", "pins"]) => id(channel).map(Route::GetPins),
        ("PUT", ["channels", channel, "messages", "pins", message]) => {
            ids(channel, message, Route::Pin)
        }
        ("DELETE", ["channels", channel, "messages", "pins", message]) => {
            ids(channel, message, Route::Unpin)
        }
        ("GET", ["channels", channel, "messages", message]) => {
            ids(channel, message, Route::GetMessage)
        }
        ("DELETE", ["channels", channel, "messages", message]) => {
            ids(channel, message, Route::DeleteMessage)
        }
        ("GET", ["channels", channel, "pins"]) => id(channel).map(Route::GetPinsLegacy),
        ("PUT", ["channels", channel, "pins", message]) => ids(channel, message, Route::PinLegacy),
        ("DELETE", ["channels", channel, "pins", message]) => {
            ids(channel, message, Route::UnpinLegacy)
        }
        ("POST", ["attachments", "refresh-urls"]) => Ok(Route::RefreshUrls),
        _ => return None,
    };
    Some(route)
}

fn id(segment: &str) -> Result<u64, ApiError> {
    segment
        .parse()
        .map_err(|_| ApiError::not_snowflake("id", segment))
}

fn ids(first: &str, second: &str, route: fn(u64, u64) -> Route) -> Result<Route, ApiError> {
    Ok(route(id(first)?, id(second)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes_and_tells_404_from_405() {
        assert_eq!(
            Route::parse(&Method::GET, "channels/5/messages/pins"),
            Ok(Route::GetPins(5))
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "channels/5/messages/7"),
            Ok(Route::DeleteMessage(5, 7))
        );
        assert_eq!(
            Route::parse(&Method::PUT, "channels/5/messages")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            Route::parse(&Method::GET, "nothing/here")
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(
            Route::parse(&Method::GET, "channels/abc").unwrap_err().code,
            50035
        );
    }
}
