using Microsoft.Extensions.Time.Testing;
using Rbs.Gateway.Security;

namespace Rbs.Tests.Gateway;

public sealed class RbsTokenServiceTests
{
    private static readonly byte[] s_key = Convert.FromBase64String(RbsTokenService.GenerateKey());

    [Fact]
    public void SessionTokenRoundTripsItsClaims()
    {
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 11, 27, 12, 0, 0, TimeSpan.Zero));
        var service = new RbsTokenService(s_key, time);

        var token = service.Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5));
        var result = service.Validate(token, RbsTokenKind.Session);

        Assert.True(result.IsValid, result.Failure);
        Assert.Equal(RbsTokenKind.Session, result.Claims!.Kind);
        Assert.Equal("agent-1", result.Claims.AgentId);
        Assert.Equal("alice", result.Claims.UserId);
        Assert.Equal(time.GetUtcNow().AddMinutes(5), result.Claims.ExpiresAt);
        Assert.DoesNotContain('+', token);
        Assert.DoesNotContain('/', token);
    }

    [Fact]
    public void TokenExpiresExactlyAtItsLifetime()
    {
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 11, 27, 12, 0, 0, TimeSpan.Zero));
        var service = new RbsTokenService(s_key, time);
        var token = service.Mint(RbsTokenKind.Join, "agent-1", "alice", TimeSpan.FromMinutes(5));

        time.Advance(TimeSpan.FromMinutes(5) - TimeSpan.FromSeconds(1));
        Assert.True(service.Validate(token, RbsTokenKind.Join).IsValid);

        time.Advance(TimeSpan.FromSeconds(1));
        var expired = service.Validate(token, RbsTokenKind.Join);
        Assert.False(expired.IsValid);
        Assert.Contains("expired", expired.Failure, StringComparison.Ordinal);
    }

    [Fact]
    public void TamperedPayloadOrSignatureIsRejected()
    {
        var service = new RbsTokenService(s_key, TimeProvider.System);
        var token = service.Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5));
        var dot = token.IndexOf('.', StringComparison.Ordinal);

        // Re-sign nothing: swap in the claims of another agent, keep the old signature.
        var other = service.Mint(RbsTokenKind.Session, "agent-2", "alice", TimeSpan.FromMinutes(5));
        var forged = other[..other.IndexOf('.', StringComparison.Ordinal)] + token[dot..];
        Assert.Contains("signature", service.Validate(forged, RbsTokenKind.Session).Failure, StringComparison.Ordinal);

        var flipped = token[..^2] + (token[^2] == 'A' ? 'B' : 'A') + token[^1];
        Assert.False(service.Validate(flipped, RbsTokenKind.Session).IsValid);
    }

    [Fact]
    public void WrongKindIsRejected()
    {
        var service = new RbsTokenService(s_key, TimeProvider.System);
        var join = service.Mint(RbsTokenKind.Join, "agent-1", "alice", TimeSpan.FromMinutes(5));

        var result = service.Validate(join, RbsTokenKind.Session);

        Assert.False(result.IsValid);
        Assert.Contains("join token cannot be used", result.Failure, StringComparison.Ordinal);
    }

    [Fact]
    public void TokenFromAnotherKeyIsRejected()
    {
        var mine = new RbsTokenService(s_key, TimeProvider.System);
        var theirs = new RbsTokenService(Convert.FromBase64String(RbsTokenService.GenerateKey()), TimeProvider.System);

        var result = mine.Validate(theirs.Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5)), RbsTokenKind.Session);

        Assert.False(result.IsValid);
        Assert.Contains("signature", result.Failure, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("no-dot")]
    [InlineData(".")]
    [InlineData("a.b.c")]
    [InlineData("e30.!!!")]
    public void MalformedTokensAreRejectedWithoutThrowing(string? token)
    {
        var service = new RbsTokenService(s_key, TimeProvider.System);
        Assert.False(service.Validate(token, RbsTokenKind.Session).IsValid);
    }

    [Fact]
    public void ShortOrInvalidKeysAreRefused()
    {
        Assert.Throws<ArgumentException>(() => new RbsTokenService(new byte[16], TimeProvider.System));
        Assert.Throws<FormatException>(() => RbsTokenService.DecodeKey("not base64!"));
        Assert.Throws<FormatException>(() => RbsTokenService.DecodeKey(Convert.ToBase64String(new byte[8])));
        Assert.Equal(32, RbsTokenService.DecodeKey(RbsTokenService.GenerateKey() + "\n").Length);
    }
}
