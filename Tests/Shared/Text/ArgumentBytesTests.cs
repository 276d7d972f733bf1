using System.Text;
using Rbs.JBazel.Commands;
using Rbs.Shared.Text;

namespace Rbs.Tests.Shared.Text;

public sealed class ArgumentBytesTests
{
    public static TheoryData<byte[]> Arguments() =>
    [
        [],
        "plain"u8.ToArray(),
        "héllo wörld ✓ 😀"u8.ToArray(),
        [.. "latin-1 "u8, 0xe9, (byte)'t', 0xe9, (byte)' ', 0xff],
        [0xe2, 0x82],             // a truncated three-byte sequence
        [0xed, 0xb2, 0x80],       // UTF-8 of the surrogate U+DC80: not valid UTF-8 either
        [0xc0, 0xaf, (byte)'x'],  // an overlong '/'
        [0x80, 0xbf, 0xfe, 0xff],
    ];

    [Theory]
    [MemberData(nameof(Arguments))]
    public void BytesSurviveDecodeAndEncode(byte[] bytes)
    {
        var decoded = ArgumentBytes.Decode(bytes);

        Assert.Equal(bytes, ArgumentBytes.Encode(decoded));
        var valid = IsUtf8(bytes);
        Assert.Equal(!valid, ArgumentBytes.HasEscapes(decoded));
        if (valid)
        {
            Assert.Equal(Encoding.UTF8.GetString(bytes), decoded);
        }

        // For a protobuf string and logs: valid UTF-8, the bad bytes shown as U+FFFD.
        Assert.True(IsUtf8(Encoding.UTF8.GetBytes(ArgumentBytes.ForDisplay(decoded))));
        Assert.False(ArgumentBytes.HasEscapes(ArgumentBytes.ForDisplay(decoded)));
    }

    [Fact]
    public void LoneSurrogatesThatAreNotEscapesEncodeAsReplacementCharacters()
    {
        byte[] expected = [.. "a\uFFFDb"u8, 0x80];
        Assert.Equal(expected, ArgumentBytes.Encode("a\uD800b\uDC80"));
    }

    [Fact]
    public void TheCommandLineGivesBackTheBytesTheRuntimeReplaced()
    {
        byte[] cmdline = [.. "/usr/bin/jbazel\0run\0//app:hello\0--\0"u8, 0xe9, (byte)'t', 0xe9, 0, 0xe2, 0x82, 0, 0];
        string[] runtimeArgs = ["run", "//app:hello", "--", Encoding.UTF8.GetString([0xe9, (byte)'t', 0xe9]), Encoding.UTF8.GetString([0xe2, 0x82]), ""];

        var raw = RawArguments.Match(cmdline, runtimeArgs);

        Assert.NotNull(raw);
        Assert.Equal(runtimeArgs[..3], raw.Take(3));
        Assert.Equal(new byte[] { 0xe9, (byte)'t', 0xe9 }, ArgumentBytes.Encode(raw[3]));
        Assert.Equal(new byte[] { 0xe2, 0x82 }, ArgumentBytes.Encode(raw[4]));
        Assert.Equal("", raw[5]);

        // A command line that does not correspond (another count, other text) is not used.
        Assert.Null(RawArguments.Match(cmdline, runtimeArgs[..5]));
        Assert.Null(RawArguments.Match(cmdline, ["build", .. runtimeArgs[1..]]));
    }

    private static bool IsUtf8(byte[] bytes) => System.Text.Unicode.Utf8.IsValid(bytes);
}
