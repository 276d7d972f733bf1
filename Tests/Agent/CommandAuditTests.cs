using Rbs.Agent.Execution;

namespace Rbs.Tests.Agent;

/// <summary>The audit line's arguments: secrets never reach the log (docs/operations.md, Audit).</summary>
public sealed class CommandAuditTests
{
    [Theory]
    [InlineData("--remote_header=Authorization=Bearer abc", "--remote_header=<redacted>")]
    [InlineData("--bes_header=x-api-key=abc", "--bes_header=<redacted>")]
    [InlineData("--google_credentials=/home/u/key.json", "--google_credentials=<redacted>")]
    [InlineData("--some_token=abc", "--some_token=<redacted>")]
    [InlineData("--db_PASSWORD=hunter2", "--db_PASSWORD=<redacted>")]
    [InlineData("--action_env=GITHUB_TOKEN=ghp_abc", "--action_env=GITHUB_TOKEN=<redacted>")]
    [InlineData("--client_env=AWS_SECRET_ACCESS_KEY=x", "--client_env=AWS_SECRET_ACCESS_KEY=<redacted>")]
    [InlineData("--action_env=PATH=/usr/bin", "--action_env=PATH=/usr/bin")]
    [InlineData("--keep_going", "--keep_going")]
    [InlineData("--config=ci", "--config=ci")]
    [InlineData("//app:all", "//app:all")]
    public void OneArgument(string argument, string audited) =>
        Assert.Equal([audited], CommandAudit.RedactArguments([argument]));

    [Fact]
    public void ASecretFlagsSeparateValueIsRedactedAndTheRestKept()
    {
        Assert.Equal(
            ["build", "--remote_header", CommandAudit.Redacted, "--config=ci", "//app:all"],
            CommandAudit.RedactArguments(["build", "--remote_header", "Authorization=Bearer abc", "--config=ci", "//app:all"]));
        // A secret flag followed by another flag has no separate value to hide.
        Assert.Equal(["--remote_header", "--keep_going"], CommandAudit.RedactArguments(["--remote_header", "--keep_going"]));
    }
}
