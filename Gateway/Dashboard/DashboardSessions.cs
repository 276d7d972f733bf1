using System.Collections.Concurrent;
using System.Security.Cryptography;

namespace Rbs.Gateway.Dashboard;

/// <summary>
/// Signed-in dashboard pages: an opaque random token (the browser's HttpOnly session cookie) → the user the orchestrator
/// accepted the API key for. In memory and bounded (<see cref="MaxSessions"/>, <see cref="Lifetime"/>): after a gateway
/// restart the page signs in again; the API key itself is never stored.
/// </summary>
internal sealed class DashboardSessions(TimeProvider time)
{
    public const int MaxSessions = 10_000;

    public static readonly TimeSpan Lifetime = TimeSpan.FromHours(12);

    private readonly ConcurrentDictionary<string, (string User, DateTimeOffset Expires)> _sessions = new(StringComparer.Ordinal);

    public string Create(string userId)
    {
        var now = time.GetUtcNow();
        if (_sessions.Count >= MaxSessions)
        {
            foreach (var (token, session) in _sessions)
            {
                if (session.Expires <= now)
                {
                    _sessions.TryRemove(token, out _);
                }
            }

            // Still full: the oldest sign-ins go first.
            foreach (var (token, _) in _sessions.OrderBy(s => s.Value.Expires).Take(_sessions.Count - MaxSessions + 1))
            {
                _sessions.TryRemove(token, out _);
            }
        }

        var created = Convert.ToHexString(RandomNumberGenerator.GetBytes(32));
        _sessions[created] = (userId, now + Lifetime);
        return created;
    }

    /// <summary>Sign-out: the session ends now.</summary>
    public void End(string? token)
    {
        if (!string.IsNullOrEmpty(token))
        {
            _sessions.TryRemove(token, out _);
        }
    }

    /// <summary>The session's user, or null (unknown, expired).</summary>
    public string? Find(string? token)
    {
        if (string.IsNullOrEmpty(token) || !_sessions.TryGetValue(token, out var session))
        {
            return null;
        }

        if (session.Expires <= time.GetUtcNow())
        {
            _sessions.TryRemove(token, out _);
            return null;
        }

        return session.User;
    }
}
