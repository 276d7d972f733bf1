using Microsoft.Extensions.Configuration.Json;
using Rbs.Shared.Hosting;

namespace Rbs.Tests.Shared.Hosting;

/// <summary>The shared command-line shape, without a process (the processes: <see cref="ServerCommandLineProcessTests"/>).</summary>
public sealed class ServerCommandLineTests
{
    private static readonly ServerCommandLine s_commandLine = new(
        "rbs-test",
        "a server for tests.",
        [
            new("--port", "Test:Port", "PORT", "50051", "The port."),
            new("--local-mode", "Test:LocalMode", null, "false", "A switch."),
        ],
        "--port",
        [new("Test:Limits:HandshakeTimeout", "00:00:10", "The handshake timeout.")]);

    [Theory]
    [InlineData(new[] { "--port", "0" }, "Test:Port", "0")]
    [InlineData(new[] { "--port=0" }, "Test:Port", "0")]
    [InlineData(new[] { "--port", "-1" }, "Test:Port", "-1")]
    [InlineData(new[] { "--local-mode" }, "Test:LocalMode", "true")]
    [InlineData(new[] { "--local-mode", "false" }, "Test:LocalMode", "false")]
    [InlineData(new[] { "--local-mode=FALSE" }, "Test:LocalMode", "FALSE")]
    [InlineData(new[] { "--Test:Other", "x y" }, "Test:Other", "x y")]
    [InlineData(new[] { "--Test:Other=a=b" }, "Test:Other", "a=b")]
    [InlineData(new[] { "--port", "1", "--port", "2" }, "Test:Port", "2")]
    public void FlagsAndKeysBecomeConfiguration(string[] args, string key, string value)
    {
        var parsed = s_commandLine.Parse(args);

        Assert.False(parsed.Help);
        Assert.Equal(value, parsed.Settings[key]);
    }

    [Theory]
    [InlineData(new[] { "--prot", "0" }, "unknown option '--prot'.")]
    [InlineData(new[] { "--port" }, "--port needs a value (--port PORT or --port=PORT).")]
    [InlineData(new[] { "--port", "--local-mode" }, "--port needs a value (--port PORT or --port=PORT).")]
    [InlineData(new[] { "--Test:Other" }, "--Test:Other needs a value (--Test:Other VALUE or --Test:Other=VALUE).")]
    [InlineData(new[] { "--local-mode=yes" }, "--local-mode is a switch: write --local-mode, --local-mode=true or --local-mode=false, not 'yes'.")]
    [InlineData(new[] { "port=1" }, "unexpected argument 'port=1': options start with '--' and take their value as --option value or --option=value.")]
    [InlineData(new[] { "--" }, "unexpected argument '--': options start with '--' and take their value as --option value or --option=value.")]
    public void AnythingElseIsOneSentenceNamingTheArgument(string[] args, string message) =>
        Assert.Equal(message, Assert.Throws<CommandLineException>(() => s_commandLine.Parse(args)).Message);

    [Theory]
    [InlineData("--help")]
    [InlineData("-h")]
    public void HelpIsRecognisedAnywhere(string help) =>
        Assert.True(s_commandLine.Parse(["--port", "1", help]).Help);

    [Fact]
    public void UsageListsEveryFlagWithItsKeyEnvironmentVariableAndDefault()
    {
        var usage = s_commandLine.Usage();

        Assert.StartsWith("rbs-test: a server for tests.\n\nUsage: rbs-test [options]\n", usage, StringComparison.Ordinal);
        Assert.Contains("  --port PORT\n      The port.\n      Test:Port, env Test__Port; default 50051\n", usage, StringComparison.Ordinal);
        Assert.Contains("  --local-mode\n      A switch.\n      Test:LocalMode, env Test__LocalMode; default false\n", usage, StringComparison.Ordinal);
        Assert.Contains("  Test:Limits:HandshakeTimeout (env Test__Limits__HandshakeTimeout; default 00:00:10)\n", usage, StringComparison.Ordinal);
        Assert.Contains("Exit codes: 0 stopped normally; 2 a bad command line or setting", usage, StringComparison.Ordinal);
    }

    [Fact]
    public void TheBuilderReadsAppsettingsOnceWithoutWatchingTheContentRootAndTheCommandLineWins()
    {
        var root = Directory.CreateTempSubdirectory("rbs-host-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(root, "appsettings.json"), """{ "Test": { "Port": "7", "Other": "from-file" } }""");

            var builder = ServerHost.CreateBuilder(s_commandLine, ["--port", "0"], root);

            Assert.Equal("from-file", builder.Configuration["Test:Other"]);
            Assert.Equal("0", builder.Configuration["Test:Port"]);
            // A reload would watch the content root recursively (an inotify watch per directory under it).
            var json = builder.Configuration.Sources.OfType<JsonConfigurationSource>().ToList();
            Assert.NotEmpty(json);
            Assert.All(json, source => Assert.False(source.ReloadOnChange, $"{source.Path} is reloaded on change"));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }
}
